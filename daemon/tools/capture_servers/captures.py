"""Reading the recorded Binance captures (``exchange_binance/``) without loading them whole.

A capture file is gzip text, one message per line: ``<receive stamp> <raw JSON>``; the stamp
is epoch nanoseconds (2024-08 set) or microseconds (2023-04 set, ``*.dat.gz``), converted to ns
by ``streams.capture.StampScale``. The JSON is the combined-stream envelope
``{"stream": ..., "data": ...}``, except one REST depth snapshot line (``{"lastUpdateId": ...}``)
in the first file of a symbol (the 2023-04 spot file has none). A symbol's files are read in
name order (``..._20240808`` then ``..._20240809``), which is time order.

One folder holds one capture set (one recording session). Files whose first stamps are more
than ``MAX_FILE_GAP_NS`` apart are refused at start: played on one clock, the replay would
otherwise wait out the gap between two sets (16 months between 2023-04 and 2024-08).

Also here: the minimal exchangeInfo the replay serves (the captures have none; precision and
limits below are approximate, good enough for ccxt's market parsing, not for order sizing) and
the book the server keeps so that a reconnecting client gets a depth snapshot that matches the
deltas it will receive next.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

try:  # orjson is declared in pyproject.toml; the stdlib stays as the fallback
    import orjson as _json

    def loads(b: bytes | str) -> object:
        return _json.loads(b)

    def dumps(o: object) -> bytes:
        return _json.dumps(o)
except ImportError:  # pragma: no cover
    import json as _stdjson

    def loads(b: bytes | str) -> object:
        return _stdjson.loads(b)

    def dumps(o: object) -> bytes:
        return _stdjson.dumps(o, separators=(",", ":")).encode()

from daemon.errors import ReplayError
from streams.capture import CaptureFormatError, StampScale

# market -> (folder, file prefix, REST base path); the REST paths are Binance's own, so ccxt's
# URL templates work after only the host is replaced
MARKETS: dict[str, tuple[str, str, str]] = {
    "spot": ("spot", "spot", "/api/v3"),
    "usdm": ("usdm_futures", "usdm", "/fapi/v1"),
    "coinm": ("coinm_futures", "cm", "/dapi/v1"),
}
_ENVELOPE = b'{"stream":"'
_SNAPSHOT = b'{"lastUpdateId"'
# a set's files are UTC days: the next day's file starts at most a day after the previous one did
MAX_FILE_GAP_NS = 25 * 3600 * 1_000_000_000


def canonical_stream(name: str) -> str:
    """Depth streams differ only by rate (``@depth@100ms`` recorded for spot, ``@depth@0ms`` for
    futures, ccxt asks for ``@depth@100ms``); they share one key so any rate gets the recording."""
    name = name.lower()
    sym, _, rest = name.partition("@")
    return f"{sym}@depth" if rest.startswith("depth") else name


@dataclass
class Capture:
    """One symbol of one market: its files, the recorded REST snapshot and the first timestamp."""

    market: str
    symbol: str  # exchange id, upper case: BTCUSDT, BTCUSD_PERP
    files: list[Path]
    first_ns: int = 0
    snapshot: bytes | None = None  # the recorded REST depth snapshot line, byte for byte
    file_first_ns: list[int] = field(default_factory=list)  # first stamp of each file, ns

    def lines(self) -> Iterator[tuple[int, str, bytes]]:
        """(receive ns, canonical stream, payload) for every stream message, in recorded order.
        Streams the gz files; the snapshot line is skipped (it is served over REST). A stamp
        that is not epoch ns or µs, or a change of unit within a file, raises ``ReplayError``."""
        for path in self.files:
            scale = StampScale(path)
            with gzip.open(path, "rb") as fh:
                for line_no, line in enumerate(fh, 1):
                    sp = line.find(b" ")
                    if sp <= 0:
                        continue
                    ts = stamp_ns(scale, line[:sp], line_no)
                    payload = line[sp + 1:].rstrip(b"\r\n")
                    if not payload.startswith(_ENVELOPE):
                        continue
                    end = payload.index(b'"', len(_ENVELOPE))
                    stream = payload[len(_ENVELOPE):end].decode()
                    yield ts, canonical_stream(stream), payload


def stamp_ns(scale: StampScale, stamp: bytes, line_no: int) -> int:
    """``scale.to_ns`` with the replay's error type."""
    try:
        return scale.to_ns(stamp, line_no)
    except CaptureFormatError as e:
        raise ReplayError(str(e)) from e


def find_captures(root: Path, market: str, symbols: list[str], scan_lines: int = 5000) -> list[Capture]:
    """Locate each symbol's files and read its first timestamp (ns) and recorded snapshot.

    Raises ``ReplayError`` when a market or symbol has no capture (better at start than a
    replay that silently sends nothing) or when a file's first stamp is not epoch ns or µs."""
    if market not in MARKETS:
        raise ReplayError(f"unknown market {market!r}; known: {sorted(MARKETS)}")
    folder, prefix, _ = MARKETS[market]
    out = []
    for sym in symbols:
        files = sorted((root / folder).glob(f"{prefix}_{sym.lower()}_*.gz"))
        if not files:
            raise ReplayError(f"no capture for {market} {sym} under {root / folder}")
        cap = Capture(market=market, symbol=sym.upper(), files=files)
        cap.file_first_ns = [_first_ns(path) for path in files]
        cap.first_ns = cap.file_first_ns[0]
        with gzip.open(files[0], "rb") as fh:
            for i, line in enumerate(fh):
                payload = line[line.find(b" ") + 1:].rstrip(b"\r\n")
                if payload.startswith(_SNAPSHOT):
                    cap.snapshot = payload
                    break
                if i >= scan_lines:
                    break
        out.append(cap)
    return out


def _first_ns(path: Path) -> int:
    scale = StampScale(path)
    with gzip.open(path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            sp = line.find(b" ")
            if sp > 0:
                return stamp_ns(scale, line[:sp], line_no)
    raise ReplayError(f"{path} holds no stamped line")


def check_one_set(captures: list[Capture]) -> None:
    """Refuse files that are not one recording session (see the module docstring): sorted by
    first stamp, no two consecutive files may start more than ``MAX_FILE_GAP_NS`` apart."""
    starts = sorted((t, path) for cap in captures for t, path in zip(cap.file_first_ns, cap.files))
    for (t0, p0), (t1, p1) in zip(starts, starts[1:]):
        if t1 - t0 > MAX_FILE_GAP_NS:
            raise ReplayError(
                f"{p1} starts {(t1 - t0) / 86_400e9:.1f} days after {p0}: not one capture set; "
                f"replay each set from its own folder (e.g. ../shared/data/exchange_binance_2023-04)")


# Approximate trading rules (Binance, August 2024): tick size, lot step, contract size.
_RULES: dict[tuple[str, str], tuple[str, str, str]] = {
    ("spot", "BTCUSDT"): ("0.01", "0.00001", "1"),
    ("spot", "ETHUSDT"): ("0.01", "0.0001", "1"),
    ("usdm", "BTCUSDT"): ("0.10", "0.001", "1"),
    ("usdm", "ETHUSDT"): ("0.01", "0.001", "1"),
    ("coinm", "BTCUSD_PERP"): ("0.1", "1", "100"),
    ("coinm", "ETHUSD_PERP"): ("0.01", "1", "10"),
}


def _precision(step: str) -> int:
    return len(step.split(".")[1].rstrip("0")) if "." in step and step.split(".")[1].rstrip("0") else 0


def exchange_info(market: str, symbols: list[str]) -> bytes:
    """A minimal exchangeInfo for ``symbols`` (approximate rules, see module docstring)."""
    out = []
    for sym in symbols:
        sym = sym.upper()
        tick, step, csize = _RULES.get((market, sym), ("0.01", "0.001", "1"))
        base = sym.split("_")[0]
        quote = "USDT" if base.endswith("USDT") else "USD"
        base = base[: -len(quote)]
        filters = [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "100000", "stepSize": step},
        ]
        s: dict[str, object] = {"symbol": sym, "status": "TRADING", "baseAsset": base, "quoteAsset": quote,
                                "baseAssetPrecision": 8, "quotePrecision": 8, "filters": filters}
        if market == "spot":
            s.update(permissions=["SPOT"], isSpotTradingAllowed=True, isMarginTradingAllowed=False,
                     orderTypes=["LIMIT", "MARKET"])
        else:
            s.update(contractType="PERPETUAL", deliveryDate=4133404800000, onboardDate=1569398400000,
                     marginAsset=quote if market == "usdm" else base, pricePrecision=_precision(tick),
                     quantityPrecision=_precision(step), underlyingType="COIN", pair=base + quote)
            if market == "coinm":
                s.update(contractStatus="TRADING", contractSize=int(csize))
                del s["status"]
        out.append(s)
    return dumps({"timezone": "UTC", "serverTime": 0, "rateLimits": [], "symbols": out})


@dataclass
class Book:
    """The book as of the last depth delta sent, seeded from the recorded snapshot.

    Until the first delta it serves the recorded snapshot unchanged; after that a snapshot
    derived from recorded data only (recorded snapshot + recorded deltas), whose
    ``lastUpdateId`` is the last delta's ``u``, so a client that re-fetches after a reconnect
    continues gap-free with the next delta."""

    recorded: bytes
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    last_id: int = 0
    changed: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        snap = loads(self.recorded)
        assert isinstance(snap, dict)
        self.last_id = int(snap["lastUpdateId"])
        self.bids = {p: q for p, q in snap["bids"]}
        self.asks = {p: q for p, q in snap["asks"]}

    def apply(self, payload: bytes) -> None:
        data = loads(payload)["data"]  # type: ignore[index]
        if int(data["u"]) <= self.last_id:  # recorded before the snapshot
            return
        for side, levels in ((self.bids, data["b"]), (self.asks, data["a"])):
            for p, q in levels:
                if float(q) == 0.0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.last_id = int(data["u"])
        self.extra = {k: data[k] for k in ("E", "T") if k in data}
        self.changed = True

    def snapshot(self, limit: int = 1000) -> bytes:
        if not self.changed:
            return self.recorded
        bids = sorted(self.bids.items(), key=lambda kv: -float(kv[0]))[:limit]
        asks = sorted(self.asks.items(), key=lambda kv: float(kv[0]))[:limit]
        return dumps({"lastUpdateId": self.last_id, **self.extra,
                      "bids": [list(x) for x in bids], "asks": [list(x) for x in asks]})
