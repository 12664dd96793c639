"""Recorded Binance captures (``<recv stamp> <combined-stream JSON>`` per line) as schema events.

Used by the streams tests and benchmark to feed real data, and by offline jobs. Event time is
the local receive time for both book tickers and trades: spot bookTicker messages carry no
exchange time, and one clock for both keeps the book path and the trades consistent.

The receive stamp is nanoseconds since the epoch in the 2024-08 captures and microseconds in
the 2023-04 ones. ``stamp_ns_factor`` is the one place that tells them apart, by magnitude;
every capture reader (this one, the efficacy benchmark's, the replay servers') converts through
``StampScale`` so that a file is played at its recorded speed, never 1000x too fast.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from schemas.market import BookTicker, MarketTrade

# Plausible receive times: 2009-01-01 .. 2100-01-01 UTC, in seconds. The ns, µs, ms and s
# spellings of this range do not overlap, so the magnitude alone names the unit.
_EPOCH_FROM_S = 1_230_768_000
_EPOCH_TO_S = 4_102_444_800
_UNITS = {1: "nanoseconds", 1_000: "microseconds"}


class CaptureFormatError(ValueError):
    """A capture line is not in the recorded format (its receive stamp, above all)."""


def stamp_ns_factor(stamp: int) -> int | None:
    """Nanoseconds per unit of a receive ``stamp``, judged by its magnitude: 1 for epoch
    nanoseconds, 1000 for epoch microseconds, None for anything else (ms, s, garbage)."""
    for factor in _UNITS:
        if _EPOCH_FROM_S * 1_000_000_000 <= stamp * factor < _EPOCH_TO_S * 1_000_000_000:
            return factor
    return None


class StampScale:
    """Receive stamps of one capture file as nanoseconds.

    The file's first stamped line decides its unit; a line in another unit (or in none) is
    refused with ``CaptureFormatError`` naming the file, the line and the stamp, rather than
    played at the wrong speed.
    """

    def __init__(self, name: str | Path) -> None:
        self.name = str(name)
        self.factor: int | None = None
        self._first_line = 0

    def to_ns(self, stamp: bytes | str, line_no: int) -> int:
        try:
            value = int(stamp)
        except ValueError:
            raise CaptureFormatError(f"{self.name} line {line_no}: receive stamp {stamp!r} is not an integer") from None
        factor = stamp_ns_factor(value)
        if factor is None:
            raise CaptureFormatError(
                f"{self.name} line {line_no}: receive stamp {value} is neither epoch nanoseconds nor "
                f"microseconds (2009..2100); refusing to play it at a guessed speed")
        if self.factor is None:
            self.factor, self._first_line = factor, line_no
        elif factor != self.factor:
            raise CaptureFormatError(
                f"{self.name} line {line_no}: receive stamp {value} is in {_UNITS[factor]} but line "
                f"{self._first_line} set the file's unit to {_UNITS[self.factor]}; a file must not mix units")
        return value * factor


def read_capture(path: Path, *, exchange: str = "binance", shift_ns: int = 0,
                 ingest_ns: int | None = None, limit: int | None = None) -> Iterator[BookTicker | MarketTrade]:
    """Book tickers and trades of one capture file, in file order; other streams (depth,
    markPrice) and the REST snapshot line are skipped. Timestamps are nanoseconds whatever the
    file's stamp unit (``CaptureFormatError`` if it has none).

    ``shift_ns`` moves event time (e.g. to make a capture look live); ``ingest_ns`` fixes
    ``ts_ingest`` (default: the shifted event time, as if ingested without delay).
    """
    n = 0
    scale = StampScale(path)
    with gzip.open(path, "rt") as fh:
        for line_no, line in enumerate(fh, 1):
            recv, _, payload = line.partition(" ")
            if not payload:
                continue  # a blank line carries nothing to time
            # every line's stamp is checked, skipped streams' too: a unit change anywhere means
            # the file's clock cannot be trusted
            ts = scale.to_ns(recv, line_no) + shift_ns
            if "@bookTicker" not in payload[:60] and "@trade" not in payload[:60]:
                continue
            msg = json.loads(payload)
            d = msg["data"]
            ing = ts if ingest_ns is None else ingest_ns
            sym = d["s"]
            if msg["stream"].endswith("@bookTicker"):
                yield BookTicker(exchange=exchange, symbol=sym, bid_price=float(d["b"]), bid_qty=float(d["B"]),
                                 ask_price=float(d["a"]), ask_qty=float(d["A"]), update_id=d.get("u"),
                                 ts_event=ts, ts_ingest=ing, source=f"capture:{path.name}", key=sym)
            else:
                yield MarketTrade(exchange=exchange, symbol=sym, trade_id=str(d["t"]), price=float(d["p"]),
                                  qty=float(d["q"]), side="sell" if d["m"] else "buy", ts_event=ts,
                                  ts_ingest=ing, source=f"capture:{path.name}", key=sym)
            n += 1
            if limit is not None and n >= limit:
                return
