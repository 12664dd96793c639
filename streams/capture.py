"""Recorded Binance captures (``<recv ns> <combined-stream JSON>`` per line) as schema events.

Used by the streams tests and benchmark to feed real data, and by offline jobs. Event time is
the local receive time for both book tickers and trades: spot bookTicker messages carry no
exchange time, and one clock for both keeps the book path and the trades consistent.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from schemas.market import BookTicker, MarketTrade


def read_capture(path: Path, *, exchange: str = "binance", shift_ns: int = 0,
                 ingest_ns: int | None = None, limit: int | None = None) -> Iterator[BookTicker | MarketTrade]:
    """Book tickers and trades of one capture file, in file order; depth lines are skipped.

    ``shift_ns`` moves event time (e.g. to make a capture look live); ``ingest_ns`` fixes
    ``ts_ingest`` (default: the shifted event time, as if ingested without delay).
    """
    n = 0
    with gzip.open(path, "rt") as fh:
        for line in fh:
            recv, _, payload = line.partition(" ")
            if "@bookTicker" not in payload[:60] and "@trade" not in payload[:60]:
                continue
            msg = json.loads(payload)
            d = msg["data"]
            ts = int(recv) + shift_ns
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
