"""The market state of ``streams.engine.SymbolEngine``: top-of-book quotes in event-time buckets
per ``exchange|symbol`` (``sk``), expired in event time, and the market partition each symbol
comes from (``tps``). Records from ``streams.state``:

- ``book``: key ``(sk, (start_s, end_s))``, one tumbling bucket of ``bucket_s`` seconds of *event
  time* (the key of the Faust windowed table it once was, kept so Flink checkpoints still read),
  value = the ``Quote``s of that bucket whose prices changed. Size-only updates are not stored:
  fills, stops, vol and drawdown depend on prices only, so the result is bit-identical. Trades
  are not stored: no reward reads them; they move event time only.
- ``index``: ``sk -> BucketSpan``, the buckets held, so old ones expire in event time.

A pure function of the recent market log: the Faust worker keeps it in memory and rebuilds it
from the log (``rebuild_quote``, driven by ``streams.rebuild``) from the ``book_start`` mark it
persisted with its input cursor.
"""

from __future__ import annotations

from typing import MutableMapping

from schemas.codec import DecodeError, decode
from schemas.market import BookTicker, MarketTrade, MarketWatermark
from streams.rewards import BookPath
from streams.state import BucketSpan, Quote


def state_key(exchange: str, symbol: str) -> str:
    return f"{exchange}|{symbol}"


class MarketBook:
    def __init__(self, *, book: MutableMapping | None, index: MutableMapping | None,
                 tp_store: MutableMapping | None, bucket_s: float, market_window_s: float):
        self.book = {} if book is None else book
        self.index = {} if index is None else index
        self.bucket_s = bucket_s
        self.bucket_ns = round(bucket_s * 1e9)
        self.keep_buckets = int(market_window_s / bucket_s) + 1
        # market buckets are kept while a candidate may still be on its way (the worker sets this
        # while the router or the internal topic has a backlog): in catch-up the market can run
        # further ahead of the candidates than market_window_s, and a candidate whose book was
        # already expired would be scored on nothing
        self.hold_expiry = False
        self.tps: dict[str, tuple[str, int]] = {}  # sk -> market (topic, partition), for lag checks
        # a durable copy where state is restored rather than rebuilt (keyed state in the Flink
        # job); the Faust worker's rebuild sets ``tps`` as it reads the log
        self.tp_store = tp_store

    def rebuild_quote(self, raw: bytes | None, *, topic: str, partition: int,
                      offset: int) -> BookTicker | MarketTrade | MarketWatermark | None:
        """One record of the market log read again after a restart or an assignment, before the
        agent processes that partition from its input cursor: it restores the book, and returns
        the market record (None for anything else) so the engine can restore event time too.
        Outcomes and groups move when the agent processes records, as before the restart."""
        try:
            ev = decode(raw)
        except DecodeError:
            return None  # dead-lettered when it was first processed; a rebuild sends nothing
        if not isinstance(ev, (BookTicker, MarketTrade, MarketWatermark)):
            return None
        sk = state_key(ev.exchange, ev.symbol)
        if self.tps.get(sk) != (topic, partition):
            self._set_tp(sk, (topic, partition))
        if isinstance(ev, BookTicker):
            self._add_quote(sk, ev, offset)
        return ev

    def _set_tp(self, sk: str, tp: tuple[str, int]) -> None:
        self.tps[sk] = tp
        if self.tp_store is not None:
            self.tp_store[sk] = tp

    def market_tp(self, sk: str) -> tuple[str, int] | None:
        """The market partition of ``sk``, if known (since start, or from ``tp_store``)."""
        tp = self.tps.get(sk)
        if tp is None and self.tp_store is not None:
            tp = self.tp_store.get(sk)
        return tuple(tp) if tp is not None else None

    def book_start(self, tp: tuple[str, int]) -> int | None:
        """Source offset of the oldest quote the book holds from market partition ``tp``: a
        rebuild that reads from there up to the input cursor restores exactly this book (expiry
        only ever drops the oldest buckets). None: no quote held."""
        out = None
        for sk, where in self.tps.items():
            span = self.index.get(sk)
            if tuple(where) != tuple(tp) or span is None:
                continue
            for idx in range(span.first, span.last + 1):
                quotes = self.book.get(self._bucket_key(sk, idx))
                if quotes:
                    out = quotes[0].offset if out is None else min(out, quotes[0].offset)
                    break
        return out

    def forget_market(self, tp: tuple[str, int]) -> None:
        """Drop the market state of a partition taken away: if it comes back, it is rebuilt."""
        for sk in [sk for sk, where in self.tps.items() if where == tuple(tp)]:
            span = self.index.pop(sk, None)
            if span is not None:
                for idx in range(span.first, span.last + 1):
                    self.book.pop(self._bucket_key(sk, idx), None)
            del self.tps[sk]

    def _bucket_key(self, sk: str, idx: int) -> tuple[str, tuple[float, float]]:
        start = idx * self.bucket_s
        return (sk, (start, start + self.bucket_s - 0.1))  # faust's WindowRange_from_start

    def _touch_bucket(self, sk: str, idx: int) -> None:
        span = self.index.get(sk)
        if span is None:
            self.index[sk] = BucketSpan(idx, idx)
            return
        first, last = span.first, span.last
        if idx <= last:
            return
        if self.hold_expiry:
            self.index[sk] = BucketSpan(first, idx)
            return
        cutoff = idx - self.keep_buckets
        for old in range(first, min(cutoff, last + 1)):  # expire in event time
            key = self._bucket_key(sk, old)
            if key in self.book:
                del self.book[key]
        self.index[sk] = BucketSpan(max(first, cutoff), idx)

    def _last_quote(self, sk: str) -> Quote | None:
        span = self.index.get(sk)
        if span is None:
            return None
        for idx in range(span.last, span.first - 1, -1):
            quotes = self.book.get(self._bucket_key(sk, idx))
            if quotes:
                return quotes[-1]
        return None

    def last_quote_ts(self, sk: str) -> int:
        """Event time of the latest quote held for ``sk`` (0: none)."""
        q = self._last_quote(sk)
        return q.ts_ns if q else 0

    def _add_quote(self, sk: str, ev: BookTicker, offset: int = -1) -> None:
        if ev.bid_price <= 0 or ev.ask_price <= 0:
            return
        last = self._last_quote(sk)
        if last is not None:
            if 0 <= offset <= last.offset:
                return  # delivered again after a restart: the stored quote is this one or later
            if ev.ts_event < last.ts_ns or (last.bid == ev.bid_price and last.ask == ev.ask_price):
                return  # older (a replay without offsets) or a size-only change: nothing to store
        idx = ev.ts_event // self.bucket_ns
        self._touch_bucket(sk, idx)
        key = self._bucket_key(sk, idx)
        self.book[key] = (*(self.book.get(key) or ()),
                          Quote(ev.ts_event, ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty, offset))

    def book_path(self, sk: str, t_from: int, t_to: int) -> BookPath:
        """Quotes from the one prevailing at ``t_from`` through ``t_to``, in time order."""
        span = self.index.get(sk)
        if span is None:
            return BookPath(())
        first, last = span.first, span.last
        lo = min(max(t_from // self.bucket_ns, first), last)
        # walk back to the bucket holding the quote in force at t_from
        while lo > first and not any(q.ts_ns <= t_from for q in self.book.get(self._bucket_key(sk, lo)) or ()):
            lo -= 1
        hi = min(t_to // self.bucket_ns, last)
        ticks = []
        for idx in range(lo, hi + 1):
            for q in self.book.get(self._bucket_key(sk, idx)) or ():
                if q.ts_ns <= t_to:
                    ticks.append(q)
        return BookPath(ticks)
