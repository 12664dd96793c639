"""The per-symbol stream processor, written against plain mappings so it runs without Faust.

In the worker the mappings are Faust tables (changelog-backed); in tests and in the PyFlink job
they can be dicts or keyed state. The Faust agents only decode nothing, call one method here and
send what it returns (``Emit``s).

State (all in the mappings; ``sk`` is ``"exchange|symbol"``):

- ``book``: windowed table, key ``(sk, (start_s, end_s))`` = one tumbling bucket of
  ``bucket_s`` seconds of *event time*, value = the top-of-book quotes of that bucket whose
  prices changed (``[ts_ns, bid, bid_qty, ask, ask_qty]``). Size-only updates are not stored:
  fills, stops, vol and drawdown depend on prices only, so the result is bit-identical.
- ``trades``: same windowing, value = ``[count, qty, notional, last_price, last_ts, last_ids]``.
- ``index``: ``sk -> [first_bucket, last_bucket]``, so old buckets expire in event time.
- ``pending``: ``group_id ->`` the arrived candidates, their horizons and outcomes so far.
- ``agenda``: ``sk -> {"due": ns, "groups": {group_id: ns}}``: when something next falls due.
- ``closed``: ``sk -> {group_id: window_end}``: replayed or late candidates of closed groups
  are dropped instead of re-opening them (kept ``CLOSED_RETENTION_NS`` of event time).

Time: outcomes are due when the horizon has passed in event time, i.e. a market event *after*
``t0 + horizon`` was seen (the touch at the horizon is then final). ``Clock`` is derived,
in-memory: the watermark per ``sk`` plus, for idle streams, an estimate that advances with the
wall clock from the last event's ``ts_ingest`` (so consumer lag does not delay it). The idle
estimate is used only after ``idle_after_s`` without events for that ``sk``, which keeps
catch-up (after a restart) on the watermark and therefore deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, MutableMapping

from schemas.agent import Action, Outcome
from schemas.base import Event
from schemas.codec import DecodeError, decode
from schemas.deadletter import DeadLetter
from schemas.market import BookTicker, DepthUpdate, MarketTrade, StreamGap
from schemas.settings import GroupConfig, RewardConfig
from streams.grouping import close_group, window_end_ns
from streams.rewards import BookPath, horizon_end_ns, score_action, to_outcome

TICK_TYPE = "streams.tick"
CLOSED_RETENTION_NS = 600 * 1_000_000_000
IGNORED_MARKET = (DepthUpdate, StreamGap)  # valid records the paper fill does not use


@dataclass(frozen=True)
class Emit:
    """One record to send: catalogue topic name (or ``"internal"``), key, payload."""

    topic: str
    key: str
    value: bytes


def state_key(exchange: str, symbol: str) -> str:
    return f"{exchange}|{symbol}"


def tick_record(sk: str) -> bytes:
    return json.dumps({"type": TICK_TYPE, "sk": sk}).encode()


class Clock:
    """Event time per ``sk``: watermark, and an idle estimate anchored on ``ts_ingest``.

    Derived state only (rebuilt from the next events, or seeded after a restart): persisting
    it would cost one changelog write per market event for nothing that cannot be recomputed.
    """

    def __init__(self, idle_after_s: float):
        self.idle_after_ns = round(idle_after_s * 1e9)
        self._wm: dict[str, int] = {}
        self._ref: dict[str, tuple[int, int, int]] = {}  # sk -> (ts_event, ts_ingest, wall seen)

    def observe(self, sk: str, ts_event: int, ts_ingest: int, wall_ns: int) -> int:
        wm = self._wm.get(sk, 0)
        if ts_event > wm:
            wm = self._wm[sk] = ts_event
            self._ref[sk] = (ts_event, ts_ingest, wall_ns)
        elif sk in self._ref:
            e, i, _ = self._ref[sk]
            self._ref[sk] = (e, i, wall_ns)  # still active: not idle
        else:
            self._ref[sk] = (ts_event, ts_ingest, wall_ns)
        return wm

    def watermark(self, sk: str) -> int:
        return self._wm.get(sk, 0)

    def seed(self, sk: str, ts_event: int, wall_ns: int) -> None:
        """After a restart with no event yet: let idle time run from now, at 1x."""
        if sk not in self._ref:
            self._wm.setdefault(sk, ts_event)
            self._ref[sk] = (ts_event, wall_ns, wall_ns)

    def idle_now(self, sk: str, wall_ns: int) -> int | None:
        """Estimated event time now if ``sk`` has been idle long enough, else None."""
        ref = self._ref.get(sk)
        if ref is None or wall_ns - ref[2] < self.idle_after_ns:
            return None
        return max(self._wm.get(sk, 0), ref[0] + (wall_ns - ref[1]))


class SymbolEngine:
    """Market state, pending candidates, outcomes and group closing for the symbols it owns."""

    def __init__(self, reward: RewardConfig, groups: GroupConfig, *, book: MutableMapping,
                 trades: MutableMapping, index: MutableMapping, pending: MutableMapping,
                 agenda: MutableMapping, closed: MutableMapping, bucket_s: float = 1.0,
                 market_window_s: float = 60.0, idle_after_s: float = 0.25, source: str = "streams"):
        self.reward, self.groups = reward, groups
        self.book, self.trades, self.index = book, trades, index
        self.pending, self.agenda, self.closed = pending, agenda, closed
        self.bucket_s = bucket_s
        self.bucket_ns = round(bucket_s * 1e9)
        self.keep_buckets = int(market_window_s / bucket_s) + 1
        self.clock = Clock(idle_after_s)
        self.source = source
        self.counters: dict[str, int] = {}

    # ---- inputs -------------------------------------------------------------------------
    def route_action(self, raw: bytes | None, *, topic: str, partition: int = -1,
                     offset: int = -1) -> list[Emit]:
        """agent.actions -> the internal topic keyed by symbol (co-partitioned with market data)."""
        try:
            ev = decode(raw)
        except DecodeError as e:
            return [self._dead(raw, topic, partition, offset, e.reason, "DecodeError")]
        if not isinstance(ev, Action):
            return [self._dead(raw, topic, partition, offset, f"type: expected agent.action, got {ev.type}",
                               "OutOfSchema")]
        return [Emit("internal", ev.symbol, raw)]  # type: ignore[arg-type]

    def on_market(self, raw: bytes | None, *, topic: str, partition: int = -1, offset: int = -1,
                  wall_ns: int) -> list[Emit]:
        try:
            ev = decode(raw)
        except DecodeError as e:
            return [self._dead(raw, topic, partition, offset, e.reason, "DecodeError")]
        if isinstance(ev, BookTicker):
            sk = state_key(ev.exchange, ev.symbol)
            self._add_quote(sk, ev)
        elif isinstance(ev, MarketTrade):
            sk = state_key(ev.exchange, ev.symbol)
            self._add_trade(sk, ev)
        elif isinstance(ev, IGNORED_MARKET):
            return []
        else:
            return [self._dead(raw, topic, partition, offset, f"type: {ev.type} does not belong on market.events",
                               "OutOfSchema")]
        now = self.clock.observe(sk, ev.ts_event, ev.ts_ingest, wall_ns)
        due = self.agenda.get(sk)
        if due is not None and due["due"] < now:
            return self._resolve(sk, now, wall_ns)
        return []

    def on_internal(self, raw: bytes | None, *, topic: str, partition: int = -1, offset: int = -1,
                    wall_ns: int) -> list[Emit]:
        """A routed action, or a timer tick asking to close idle windows of one ``sk``."""
        if raw is not None and raw.startswith(b'{"type": "streams.tick"'):
            sk = json.loads(raw)["sk"]
            now = self.clock.idle_now(sk, wall_ns)
            return [] if now is None else self._resolve(sk, now, wall_ns)
        try:
            action = decode(raw)
        except DecodeError as e:
            return [self._dead(raw, topic, partition, offset, e.reason, "DecodeError")]
        if not isinstance(action, Action):
            return [self._dead(raw, topic, partition, offset, f"type: unexpected {action.type}", "OutOfSchema")]
        sk = self._action_key(action)
        if not self._add_action(sk, action):
            return []
        self.clock.observe(sk, action.ts_event, action.ts_ingest, wall_ns)
        return self._resolve(sk, self.clock.watermark(sk), wall_ns)

    def idle_due(self, wall_ns: int) -> list[tuple[str, str]]:
        """``(symbol, sk)`` whose agenda is due by the idle estimate: the timer ticks these."""
        out = []
        for sk, entry in list(self.agenda.items()):
            now = self.clock.idle_now(sk, wall_ns)
            if now is None:
                self.clock.seed(sk, self._last_quote_ts(sk), wall_ns)
                continue
            if entry["due"] < now:
                out.append((sk.split("|", 1)[1], sk))
        return out

    # ---- market state -------------------------------------------------------------------
    def _bucket_key(self, sk: str, idx: int) -> tuple[str, tuple[float, float]]:
        start = idx * self.bucket_s
        return (sk, (start, start + self.bucket_s - 0.1))  # faust's WindowRange_from_start

    def _touch_bucket(self, sk: str, idx: int) -> None:
        span = self.index.get(sk)
        if span is None:
            self.index[sk] = [idx, idx]
            return
        first, last = span
        if idx <= last:
            return
        cutoff = idx - self.keep_buckets
        for old in range(first, min(cutoff, last + 1)):  # expire in event time
            for table in (self.book, self.trades):
                key = self._bucket_key(sk, old)
                if key in table:
                    del table[key]
        self.index[sk] = [max(first, cutoff), idx]

    def _last_quote(self, sk: str) -> list | None:
        span = self.index.get(sk)
        if span is None:
            return None
        for idx in range(span[1], span[0] - 1, -1):
            quotes = self.book.get(self._bucket_key(sk, idx))
            if quotes:
                return quotes[-1]
        return None

    def _last_quote_ts(self, sk: str) -> int:
        q = self._last_quote(sk)
        return q[0] if q else 0

    def _add_quote(self, sk: str, ev: BookTicker) -> None:
        if ev.bid_price <= 0 or ev.ask_price <= 0:
            return
        last = self._last_quote(sk)
        if last is not None and (ev.ts_event < last[0] or (last[1] == ev.bid_price and last[3] == ev.ask_price)):
            return  # a replay after restart (older) or a size-only change: nothing to store
        idx = ev.ts_event // self.bucket_ns
        self._touch_bucket(sk, idx)
        key = self._bucket_key(sk, idx)
        quotes = list(self.book.get(key) or ())
        quotes.append([ev.ts_event, ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty])
        self.book[key] = quotes

    def _add_trade(self, sk: str, ev: MarketTrade) -> None:
        idx = ev.ts_event // self.bucket_ns
        self._touch_bucket(sk, idx)
        key = self._bucket_key(sk, idx)
        n, qty, notional, _px, last_ts, ids = self.trades.get(key) or (0, 0.0, 0.0, 0.0, 0, [])
        if ev.ts_event < last_ts or (ev.ts_event == last_ts and ev.trade_id in ids):
            return  # replayed after a restart
        ids = [*ids, ev.trade_id] if ev.ts_event == last_ts else [ev.trade_id]
        self.trades[key] = [n + 1, qty + ev.qty, notional + ev.qty * ev.price, ev.price, ev.ts_event, ids]

    def book_path(self, sk: str, t_from: int, t_to: int) -> BookPath:
        """Quotes from the one prevailing at ``t_from`` through ``t_to``, in time order."""
        span = self.index.get(sk)
        if span is None:
            return BookPath(())
        first, last = span
        lo = min(max(t_from // self.bucket_ns, first), last)
        # walk back to the bucket holding the quote in force at t_from
        while lo > first and not any(q[0] <= t_from for q in self.book.get(self._bucket_key(sk, lo)) or ()):
            lo -= 1
        hi = min(t_to // self.bucket_ns, last)
        ticks = []
        for idx in range(lo, hi + 1):
            for q in self.book.get(self._bucket_key(sk, idx)) or ():
                if q[0] <= t_to:
                    ticks.append(q)
        return BookPath(ticks)

    # ---- candidates, outcomes, groups ---------------------------------------------------
    def _action_key(self, action: Action) -> str:
        return state_key(action.exchange, action.symbol)

    def _add_action(self, sk: str, action: Action) -> bool:
        closed = self.closed.get(sk) or {}
        if action.group_id in closed:
            self._count("late_or_replayed_actions")
            return False
        g = self.pending.get(action.group_id) or {"sk": sk, "t0": action.ts_event, "a": {}, "he": {}, "o": {}}
        idx = str(action.candidate_index)
        if idx in g["a"]:
            return False  # replayed after a restart
        g = dict(g)
        g["a"] = {**g["a"], idx: action.model_dump_json()}
        g["he"] = {**g["he"], idx: horizon_end_ns(action)}
        g["t0"] = min(g["t0"], action.ts_event)
        self.pending[action.group_id] = g
        self._schedule(sk, action.group_id, g)
        return True

    def _window_end(self, g: dict) -> int:
        return window_end_ns(g["t0"], list(g["he"].values()), self.groups.grace_s)

    def _schedule(self, sk: str, gid: str, g: dict | None) -> None:
        entry = self.agenda.get(sk) or {"due": 0, "groups": {}}
        groups = dict(entry["groups"])
        if g is None:
            groups.pop(gid, None)
        else:
            todo = [he for i, he in g["he"].items() if i not in g["o"]]
            groups[gid] = min([*todo, self._window_end(g)])
        if groups:
            self.agenda[sk] = {"due": min(groups.values()), "groups": groups}
        elif sk in self.agenda:
            del self.agenda[sk]

    def _resolve(self, sk: str, now: int, wall_ns: int) -> list[Emit]:
        """Score every candidate whose horizon is before ``now``; close groups that are done."""
        entry = self.agenda.get(sk)
        if entry is None or entry["due"] >= now:
            return []
        out: list[Emit] = []
        for gid, due in sorted(entry["groups"].items(), key=lambda kv: kv[1]):
            if due < now:
                out.extend(self._advance(sk, gid, now, wall_ns))
        return out

    def _advance(self, sk: str, gid: str, now: int, wall_ns: int) -> list[Emit]:
        g = self.pending[gid]
        actions = {i: Action.model_validate_json(a) for i, a in g["a"].items()}
        outcomes = dict(g["o"])
        out: list[Emit] = []
        for i, action in sorted(actions.items(), key=lambda kv: int(kv[0])):
            if i not in outcomes and g["he"][i] < now:
                t0 = action.ts_event
                book = self.book_path(sk, t0 + round(self.reward.latency_ms * 1e6), g["he"][i])
                o = to_outcome(action, score_action(action, self.reward, book), ts_ingest=wall_ns,
                               source=self.source)
                outcomes[i] = o.model_dump_json()
                out.append(Emit("agent.outcomes", gid, o.model_dump_json().encode()))
        size = next(iter(actions.values())).group_size
        end = self._window_end(g)
        reason = "all_in" if len(outcomes) >= size else ("expired" if end < now else None)
        if reason is None:
            g = {**g, "o": outcomes}
            self.pending[gid] = g
            self._schedule(sk, gid, g)
            return out
        group = close_group(list(actions.values()),
                            {int(i): Outcome.model_validate_json(o) for i, o in outcomes.items()},
                            self.groups, close_reason=reason, window_end=end, ts_ingest=wall_ns,
                            source=self.source)
        out.append(Emit("learn.groups", gid, group.model_dump_json().encode()))
        self._count(f"groups_{group.status}")
        closed = {k: v for k, v in (self.closed.get(sk) or {}).items() if v >= end - CLOSED_RETENTION_NS}
        closed[gid] = end
        self.closed[sk] = closed
        del self.pending[gid]
        self._schedule(sk, gid, None)
        return out

    # ---- misc ---------------------------------------------------------------------------
    def _dead(self, raw: Any, topic: str, partition: int, offset: int, reason: str, kind: str) -> Emit:
        self._count("dead_letters")
        dl = DeadLetter.from_input(raw, source_topic=topic, partition=partition, offset=offset,
                                   reason=reason, error_type=kind, source=self.source, key=topic)
        return Emit("deadletter", topic, dl.model_dump_json().encode())

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


__all__ = ["Clock", "Emit", "Event", "SymbolEngine", "TICK_TYPE", "state_key", "tick_record"]
