"""The recorded Binance captures as the live pipeline would see them, split train / held out.

Events come from ``streams.capture.read_capture`` (the reader the stream tests use). Symbols are
renamed to the ccxt names the live sources produce (``BTC/USDT`` spot, ``BTC/USDT:USDT`` USD-M,
``BTC/USD:BTC`` COIN-M): spot and USD-M both say ``BTCUSDT`` in the raw messages, and the
context window and actor key on the symbol, so without it two markets would share one window.
"""

from __future__ import annotations

import fnmatch
import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from schemas import BookTicker, MarketTrade
from streams.capture import read_capture
from streams.rewards import BookPath

# folder -> (ccxt exchange id, market label)
FOLDERS = {"spot": ("binance", "spot"), "usdm_futures": ("binanceusdm", "usdm"),
           "coinm_futures": ("binancecoinm", "coinm")}
MarketEvent = BookTicker | MarketTrade


@dataclass
class CaptureFile:
    path: Path
    market: str  # spot | usdm | coinm
    exchange: str  # the ccxt id the live source would carry
    symbol: str  # ccxt symbol
    held_out: bool
    first_ns: int = 0
    last_ns: int = 0

    @property
    def name(self) -> str:
        return self.path.name


def ccxt_symbol(market: str, raw: str) -> str:
    """``BTCUSDT`` -> ``BTC/USDT`` (spot) or ``BTC/USDT:USDT`` (USD-M); ``BTCUSD_PERP`` -> ``BTC/USD:BTC``."""
    raw = raw.upper()
    if market == "coinm":
        pair = raw.split("_")[0]
        base = pair[:-3]
        return f"{base}/USD:{base}"
    base, quote = raw[:-4], raw[-4:]
    return f"{base}/{quote}" if market == "spot" else f"{base}/{quote}:{quote}"


def _raw_symbol(path: Path) -> str:
    # spot_btcusdt_20240808.gz, usdm_ethusdt_20240808.gz, cm_btcusd_perp_20240809.gz,
    # usdm_btcusdt_20230404.dat.gz
    stem = path.name.split(".")[0]
    parts = stem.split("_")
    return "_".join(parts[1:-1])


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def discover(roots: Path | Iterable[Path], include: list[str], holdout: list[str]) -> list[CaptureFile]:
    """Every capture under the ``roots`` folders matching ``include`` (``*.gz`` and ``*.dat.gz``
    alike), flagged held out by ``holdout``. Files are known by name (globs, per-file events), so
    a name found in two folders is refused."""
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    out: list[CaptureFile] = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"capture folder {root} does not exist (set --captures)")
        for folder, (exchange, market) in FOLDERS.items():
            for path in sorted((root / folder).glob("*.gz")):
                if not _matches(path.name, include):
                    continue
                out.append(CaptureFile(path=path, market=market, exchange=exchange,
                                       symbol=ccxt_symbol(market, _raw_symbol(path)),
                                       held_out=_matches(path.name, holdout)))
    if not out:
        raise FileNotFoundError(f"no capture under {', '.join(map(str, roots))} matches {include}")
    seen: dict[str, Path] = {}
    for cap in out:
        if cap.name in seen:
            raise ValueError(f"capture {cap.name} is in two folders ({seen[cap.name]}, {cap.path}); "
                             f"names must be unique across --captures")
        seen[cap.name] = cap.path
    return out


def load(cap: CaptureFile) -> list[MarketEvent]:
    """Book tickers and trades of one file, renamed to the ccxt symbol, in file (= time) order;
    timestamps (and so ``first_ns``/``last_ns``) in ns whatever the file's stamp unit."""
    events = [ev.model_copy(update={"symbol": cap.symbol, "key": cap.symbol})
              for ev in read_capture(cap.path, exchange=cap.exchange)]
    if events:
        cap.first_ns, cap.last_ns = events[0].ts_event, events[-1].ts_event
    return events


def merged(streams: Iterable[list[MarketEvent]]) -> Iterator[MarketEvent]:
    """All files of a phase as one stream in event time, as the daemon would receive them."""
    return heapq.merge(*streams, key=lambda ev: ev.ts_event)


def book_paths(caps: list[CaptureFile], events: dict[str, list[MarketEvent]]) -> dict[str, BookPath]:
    """One top-of-book path per symbol over the given files only (a phase never sees another's)."""
    ticks: dict[str, list[tuple]] = {}
    for cap in sorted(caps, key=lambda c: c.first_ns):
        rows = ticks.setdefault(cap.symbol, [])
        rows.extend((ev.ts_event, ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty)
                    for ev in events[cap.name] if isinstance(ev, BookTicker))
    return {sym: BookPath(sorted(rows, key=lambda r: r[0])) for sym, rows in ticks.items()}


def capture_of(caps: list[CaptureFile], symbol: str, t_ns: int) -> str:
    """The file a decision at ``t_ns`` on ``symbol`` was taken in (files of one symbol don't overlap)."""
    best = None
    for cap in caps:
        if cap.symbol == symbol and cap.first_ns <= t_ns:
            if best is None or cap.first_ns > best.first_ns:
                best = cap
    return best.name if best else "?"
