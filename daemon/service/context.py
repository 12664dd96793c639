"""The actor's view of each market: a bounded window of recent quotes, trades and social counts.

Fed with normalised records in arrival order; ``features(exchange, symbol, now_ns)`` turns it
into the numbers the prompt shows: recent returns, spread, top-of-book imbalance, traded volume
and social activity. Memory is bounded by time (``window_s``) and by count, whatever the event rate.

A market is an (exchange, symbol) pair, as the stream processor keys it (``exchange|symbol``):
BTC/USDT on Binance and on OKX are two windows. Their prices differ, and their clocks may be
years apart (replays of captures from different days), so one shared window would mix two books
and drop one venue's quotes as "late".
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from itertools import islice, takewhile
from dataclasses import dataclass, field

from schemas import BookTicker, Event, MarketTrade, SocialEngagement, SocialPost
from schemas.market import MarketFeatures

RETURN_LAGS_S = (1, 10, 60)  # MarketFeatures' ret_1s, ret_10s, ret_60s
VOLUME_WINDOW_S = 10
SOCIAL_WINDOW_S = 60
MAX_POINTS = 20_000


@dataclass
class SymbolWindow:
    quotes: deque[tuple[int, float, float, float, float]] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))
    trades: deque[tuple[int, float, float]] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))

    def quotes_upto(self, t_ns: int) -> int:
        """How many quotes are at or before ``t_ns`` (the last of them is the one in force then)."""
        # quotes arrive in time order per market; bisect over the deque's timestamps
        q = self.quotes
        lo, hi = 0, len(q)
        while lo < hi:
            m = (lo + hi) // 2
            if q[m][0] <= t_ns:
                lo = m + 1
            else:
                hi = m
        return lo

    def mid_at(self, t_ns: int) -> float | None:
        """Mid of the last quote at or before ``t_ns`` (None before the first)."""
        n = self.quotes_upto(t_ns)
        if n == 0:
            return None
        _, bid, _, ask, _ = self.quotes[n - 1]
        return (bid + ask) / 2


Market = tuple[str, str]  # (exchange, symbol)


class ContextWindow:
    """One window per market, keyed by (exchange, symbol); social activity shared by all."""

    def __init__(self, window_s: float = 300.0):
        self.window_ns = int(window_s * 1e9)
        self.markets: dict[Market, SymbolWindow] = {}
        self.social: deque[tuple[int, str]] = deque(maxlen=MAX_POINTS)

    def observe(self, ev: Event) -> None:
        if isinstance(ev, BookTicker):
            if ev.bid_price <= 0 or ev.ask_price <= 0:
                return
            w = self.markets.setdefault((ev.exchange, ev.symbol), SymbolWindow())
            if w.quotes and ev.ts_event < w.quotes[-1][0]:
                return  # a late quote would break the time order the bisects rely on
            w.quotes.append((ev.ts_event, ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty))
            self._trim(w.quotes, ev.ts_event)
        elif isinstance(ev, MarketTrade):
            w = self.markets.setdefault((ev.exchange, ev.symbol), SymbolWindow())
            if w.trades and ev.ts_event < w.trades[-1][0]:
                return
            w.trades.append((ev.ts_event, ev.price, ev.qty))
            self._trim(w.trades, ev.ts_event)
        elif isinstance(ev, (SocialPost, SocialEngagement)):
            kind = "post" if isinstance(ev, SocialPost) else ev.kind
            self.social.append((ev.ts_event, kind))

    def _trim(self, dq: deque, now_ns: int) -> None:
        cutoff = now_ns - self.window_ns
        while dq and dq[0][0] < cutoff:
            dq.popleft()

    def quotes_between(self, exchange: str, symbol: str, t_from: int,
                       t_to: int) -> list[tuple[int, float, float, float, float]]:
        """The quote in force at ``t_from`` and every later one through ``t_to`` (the book path a
        fill needs), as far as the window still holds them."""
        w = self.markets.get((exchange, symbol))
        if w is None:
            return []
        start = max(0, w.quotes_upto(t_from) - 1)
        return list(takewhile(lambda x: x[0] <= t_to, islice(w.quotes, start, None)))

    def last_quote(self, exchange: str, symbol: str) -> tuple[int, float, float, float, float] | None:
        w = self.markets.get((exchange, symbol))
        return w.quotes[-1] if w and w.quotes else None

    def features(self, exchange: str, symbol: str, now_ns: int) -> MarketFeatures | None:
        """The prompt's features at ``now_ns``; None until the market has a quote."""
        w = self.markets.get((exchange, symbol))
        if w is None or not w.quotes:
            return None
        mid_now = w.mid_at(now_ns)
        if mid_now is None:
            return None
        t, bid, bq, ask, aq = w.quotes[-1]
        out: dict[str, float] = {}
        for lag in RETURN_LAGS_S:
            past = w.mid_at(now_ns - lag * 1_000_000_000)
            out[f"ret_{lag}s"] = 0.0 if past is None else (mid_now / past - 1.0) * 1e4
        out["spread_bps"] = (ask - bid) / ((ask + bid) / 2) * 1e4
        out["imbalance"] = (bq - aq) / (bq + aq) if bq + aq > 0 else 0.0
        cutoff = now_ns - VOLUME_WINDOW_S * 1_000_000_000
        times = [tr[0] for tr in w.trades]
        start = bisect_left(times, cutoff)
        out["volume"] = sum(tr[2] * tr[1] for tr in list(w.trades)[start:])  # quote notional traded
        s_cut = now_ns - SOCIAL_WINDOW_S * 1_000_000_000
        recent = [k for ts, k in self.social if ts >= s_cut]
        if self.social:
            out["social_posts"] = float(sum(1 for k in recent if k == "post"))
            out["social_likes"] = float(sum(1 for k in recent if k == "like"))
        return MarketFeatures(**out)
