"""The per-symbol stream processor, written against plain mappings so it runs without Faust.

In the worker the mappings are Faust tables (changelog-backed); in tests and in the PyFlink job
they can be dicts or keyed state. The Faust agents only decode nothing, call one method here and
send what it returns (``Emit``s).

State (all in the mappings; ``sk`` is ``"exchange|symbol"``):

- ``book``: windowed table, key ``(sk, (start_s, end_s))`` = one tumbling bucket of
  ``bucket_s`` seconds of *event time*, value = the top-of-book quotes of that bucket whose
  prices changed (``[ts_ns, bid, bid_qty, ask, ask_qty, offset]``; the source offset makes a
  replay after a restart exact, even for quotes sharing a timestamp). Size-only updates are not stored:
  fills, stops, vol and drawdown depend on prices only, so the result is bit-identical.
- ``trades``: same windowing, value = ``[count, qty, notional, last_price, last_ts, last_ids]``.
- ``index``: ``sk -> [first_bucket, last_bucket]``, so old buckets expire in event time.
- ``pending``: ``group_id ->`` the arrived candidates, their horizons and outcomes so far.
- ``agenda``: ``sk -> {"due": ns, "groups": {group_id: ns}}``: when something next falls due.
- ``closed``: ``sk -> {group_id: window_end}``: replayed or late candidates of closed groups
  are dropped instead of re-opening them (kept ``CLOSED_RETENTION_NS`` of event time).

Time: outcomes are due when the horizon has passed in event time, i.e. a market event *after*
``t0 + horizon`` was seen (the touch at the horizon is then final); candidates never advance
event time (in catch-up they run ahead of the market data). ``Clock`` is derived, in-memory: the
market watermark per ``sk`` plus, for idle streams, an estimate that advances with the wall
clock from the last event's ``ts_ingest``. The estimate is used only by timer ticks, after
``idle_after_s`` without events for that ``sk`` and (in the worker) only when the agent has
processed all of the market partition (its input cursor at the end offset, ``streams.cursor``),
which keeps catch-up on the watermark and deterministic.
Groups close ``all_in`` on events; ``expired`` only on ticks (see ``_advance``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, MutableMapping

from schemas.agent import Action, Outcome
from schemas.base import Event
from schemas.codec import DecodeError, decode
from schemas.deadletter import DeadLetter
from schemas.market import BookTicker, DepthUpdate, MarketTrade, MarketWatermark, StreamGap
from schemas.settings import GroupConfig, RewardConfig
from streams.grouping import close_group, window_end_ns
from streams.rewards import BookPath, horizon_end_ns, score_action, to_outcome

TICK_TYPE = "streams.tick"
CLOSED_RETENTION_NS = 600 * 1_000_000_000
_NEVER = 1 << 62
MAX_LAG_NS = 1_000_000_000
SEED_IDLE_NS = 2_000_000_000  # after a restart, give the consumer this long to deliver a first event
IGNORED_MARKET = (DepthUpdate, StreamGap)  # valid records the paper fill does not use


@dataclass(frozen=True)
class Emit:
    """One record to send: catalogue topic name (or ``"internal"``), key, payload."""

    topic: str
    key: str
    value: bytes


def state_key(exchange: str, symbol: str) -> str:
    return f"{exchange}|{symbol}"


def tick_record(sk: str, now: int = 0) -> bytes:
    """A timer tick: close what is due for ``sk`` at estimated event time ``now``."""
    return json.dumps({"type": TICK_TYPE, "sk": sk, "now": now}).encode()


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

    def idle_now(self, sk: str, wall_ns: int, caught_up: bool = False) -> int | None:
        """Estimated event time now if ``sk`` has been idle long enough, else None.

        Live, ``ts_ingest`` tracks event time, so event time now is the last event's time plus
        the wall time since it was *ingested*. How far behind ingest we saw it (our lag) counts
        for at most ``MAX_LAG_NS``: a consumer catching up on a backlog must not jump ahead.
        """
        ref = self._ref.get(sk)
        if ref is None:
            return None
        ts_event, ts_ingest, seen = ref
        idle = wall_ns - seen
        if idle < (self.idle_after_ns if seen != ts_ingest else max(self.idle_after_ns, SEED_IDLE_NS)):
            return None
        lag = max(seen - ts_ingest, 0)
        if not caught_up:
            lag = min(lag, MAX_LAG_NS)
        return max(self._wm.get(sk, 0), ts_event + idle + lag)


class SymbolEngine:
    """Market state, pending candidates, outcomes and group closing for the symbols it owns."""

    def __init__(self, reward: RewardConfig, groups: GroupConfig, *, book: MutableMapping,
                 trades: MutableMapping, index: MutableMapping, pending: MutableMapping,
                 agenda: MutableMapping, closed: MutableMapping, bucket_s: float = 1.0,
                 market_window_s: float = 60.0, idle_after_s: float = 0.25, idle_close: bool = True,
                 source: str = "streams"):
        self.reward, self.groups = reward, groups
        self.book, self.trades, self.index = book, trades, index
        self.pending, self.agenda, self.closed = pending, agenda, closed
        self.bucket_s = bucket_s
        self.grace_ns = round(groups.grace_s * 1e9)
        self.bucket_ns = round(bucket_s * 1e9)
        self.keep_buckets = int(market_window_s / bucket_s) + 1
        self.clock = Clock(idle_after_s)
        # off for a loop-paced replay: its input pauses while the loop works, and a wall-clock
        # estimate would then score candidates on a book still missing the quotes to come
        self.idle_close = idle_close
        self.source = source
        # market buckets are kept while a candidate may still be on its way (the worker sets this
        # while the router or the internal topic has a backlog): in catch-up the market can run
        # further ahead of the candidates than market_window_s, and a candidate whose book was
        # already expired would be scored on nothing
        self.hold_expiry = False
        self.counters: dict[str, int] = {}
        self.tps: dict[str, tuple[str, int]] = {}  # sk -> market (topic, partition), for lag checks

    # ---- inputs -------------------------------------------------------------------------
    def route_action(self, raw: bytes | None, *, topic: str, partition: int = -1,
                     offset: int = -1) -> list[Emit]:
        """agent.actions -> the internal topic keyed by symbol (co-partitioned with market data)."""
        try:
            ev = decode(raw)
        except DecodeError as e:
            return [self.dead_letter(raw, topic, partition, offset, e.reason, "DecodeError")]
        if not isinstance(ev, Action):
            return [self.dead_letter(raw, topic, partition, offset, f"type: expected agent.action, got {ev.type}",
                               "OutOfSchema")]
        return [Emit("internal", ev.symbol, raw)]  # type: ignore[arg-type]

    def on_market(self, raw: bytes | None, *, topic: str, partition: int = -1, offset: int = -1,
                  wall_ns: int) -> list[Emit]:
        try:
            ev = decode(raw)
        except DecodeError as e:
            return [self.dead_letter(raw, topic, partition, offset, e.reason, "DecodeError")]
        if isinstance(ev, BookTicker):
            sk = state_key(ev.exchange, ev.symbol)
            self._add_quote(sk, ev, offset)
        elif isinstance(ev, MarketTrade):
            sk = state_key(ev.exchange, ev.symbol)
            self._add_trade(sk, ev)
        elif isinstance(ev, MarketWatermark):
            sk = state_key(ev.exchange, ev.symbol)  # moves event time only: what it makes final closes
        elif isinstance(ev, IGNORED_MARKET):
            return []
        else:
            return [self.dead_letter(raw, topic, partition, offset, f"type: {ev.type} does not belong on market.events",
                               "OutOfSchema")]
        now = self.clock.observe(sk, ev.ts_event, ev.ts_ingest, wall_ns)
        if self.tps.get(sk) != (topic, partition):
            self.tps[sk] = (topic, partition)
            span = self.index.get(sk)
            if span is not None:
                self.index[sk] = [span[0], span[1], topic, partition]  # for lag checks after a restart
        due = self.agenda.get(sk)
        if due is not None and due["due"] < now:
            return self._resolve(sk, now, wall_ns)
        return []

    def on_internal(self, raw: bytes | None, *, topic: str, partition: int = -1, offset: int = -1,
                    wall_ns: int) -> list[Emit]:
        """A routed action, or a timer tick asking to close idle windows of one ``sk``."""
        if raw is not None and raw.startswith(b'{"type": "streams.tick"'):
            msg = json.loads(raw)
            sk = msg["sk"]
            now = max(msg.get("now", 0), self.clock.watermark(sk))  # the timer's estimate
            return self._resolve(sk, now, wall_ns, expire=True)
        try:
            action = decode(raw)
        except DecodeError as e:
            return [self.dead_letter(raw, topic, partition, offset, e.reason, "DecodeError")]
        if not isinstance(action, Action):
            return [self.dead_letter(raw, topic, partition, offset, f"type: unexpected {action.type}", "OutOfSchema")]
        sk = self._action_key(action)
        if not self._add_action(sk, action, wall_ns):
            return []
        # candidates never advance event time: in catch-up they can run ahead of the market data.
        # An unseen symbol (a restart) starts at its last stored quote; at the candidate's t0 it
        # would score restored candidates on a book still missing the quotes to be replayed. Only
        # a symbol with no stored book at all starts at t0 (so idle handling has a reference).
        self.clock.seed(sk, self._last_quote_ts(sk) or action.ts_event, wall_ns)
        return self._resolve(sk, self.clock.watermark(sk), wall_ns)

    def idle_due(self, wall_ns: int, caught_up: Callable[[tuple[str, int]], bool | None] | None = None,
                 ) -> list[tuple[str, str, int]]:
        """``(symbol, sk)`` whose agenda is due by the idle estimate: the timer ticks these.

        ``caught_up(topic, partition)``: whether the consumer has read all of that market
        partition (True), still has a backlog (False: then the stream is not idle), or unknown.
        """
        out = []
        for sk, entry in list(self.agenda.items()):
            self.clock.seed(sk, self._last_quote_ts(sk), wall_ns)  # no-op unless unseen since start
            tp = self.tps.get(sk) or self._persisted_tp(sk)
            state = caught_up(tp) if caught_up is not None and tp is not None else None
            # with a lag probe, idle means "read everything": unknown (e.g. still joining the
            # consumer group after a restart) is not idle, or a backlog would be skipped
            idle = None if (not self.idle_close or (caught_up is not None and state is not True)) else \
                self.clock.idle_now(sk, wall_ns, caught_up=bool(state))
            now = idle or self.clock.watermark(sk)
            if (idle is not None and entry["due"] < idle) or (entry["expiry"] < now and wall_ns >= entry["grace"]):
                out.append((sk.split("|", 1)[1], sk, now))
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
        first, last = span[0], span[1]
        if idx <= last:
            return
        if self.hold_expiry:
            self.index[sk] = [first, idx, *span[2:]]
            return
        cutoff = idx - self.keep_buckets
        for old in range(first, min(cutoff, last + 1)):  # expire in event time
            for table in (self.book, self.trades):
                key = self._bucket_key(sk, old)
                if key in table:
                    del table[key]
        self.index[sk] = [max(first, cutoff), idx, *span[2:]]

    def _persisted_tp(self, sk: str) -> tuple[str, int] | None:
        span = self.index.get(sk)
        return (span[2], span[3]) if span is not None and len(span) == 4 else None

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

    def _add_quote(self, sk: str, ev: BookTicker, offset: int = -1) -> None:
        if ev.bid_price <= 0 or ev.ask_price <= 0:
            return
        last = self._last_quote(sk)
        if last is not None:
            if 0 <= offset <= (last[5] if len(last) > 5 else -1):
                return  # delivered again after a restart: the stored quote is this one or later
            if ev.ts_event < last[0] or (last[1] == ev.bid_price and last[3] == ev.ask_price):
                return  # older (a replay without offsets) or a size-only change: nothing to store
        idx = ev.ts_event // self.bucket_ns
        self._touch_bucket(sk, idx)
        key = self._bucket_key(sk, idx)
        quotes = list(self.book.get(key) or ())
        quotes.append([ev.ts_event, ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty, offset])
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
        first, last = span[0], span[1]
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

    def _add_action(self, sk: str, action: Action, wall_ns: int) -> bool:
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
        g["last"] = wall_ns
        self.pending[action.group_id] = g
        self._schedule(sk, action.group_id, g)
        return True

    def _window_end(self, g: dict) -> int:
        return window_end_ns(g["t0"], list(g["he"].values()), self.groups.grace_s)

    def _schedule(self, sk: str, gid: str, g: dict | None) -> None:
        """Agenda per sk: ``due`` = next outcome (event-driven), ``expiry`` = earliest window end,
        ``grace`` = wall time before which no window may expire (see ``_advance``)."""
        entry = self.agenda.get(sk) or {"groups": {}}
        groups = dict(entry["groups"])
        if g is None:
            groups.pop(gid, None)
        else:
            todo = [he for i, he in g["he"].items() if i not in g["o"]]
            groups[gid] = [min(todo) if todo else _NEVER, self._window_end(g), g["last"] + self.grace_ns]
        if groups:
            self.agenda[sk] = {"due": min(v[0] for v in groups.values()),
                               "expiry": min(v[1] for v in groups.values()),
                               "grace": min(v[2] for v in groups.values()), "groups": groups}
        elif sk in self.agenda:
            del self.agenda[sk]

    def _resolve(self, sk: str, now: int, wall_ns: int, expire: bool = False) -> list[Emit]:
        """Score every candidate whose horizon is before ``now``; close groups that are done.
        Only timer ticks (``expire``) close groups by expiry; events close complete groups."""
        entry = self.agenda.get(sk)
        if entry is None or (entry["due"] >= now and not expire):
            return []
        out: list[Emit] = []
        for gid, (due, end, grace) in sorted(entry["groups"].items(), key=lambda kv: kv[1]):
            if due < now or (expire and end < now and wall_ns >= grace):
                out.extend(self._advance(sk, gid, now, wall_ns, expire))
        return out

    def _advance(self, sk: str, gid: str, now: int, wall_ns: int, expire: bool) -> list[Emit]:
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
        # expiry needs the window over in event time *and* grace_s of wall time since the first
        # candidate arrived: a group opened late (replay, catch-up) still gathers its siblings
        expired = expire and end < now and wall_ns - g["last"] >= self.grace_ns
        reason = "all_in" if len(outcomes) >= size else ("expired" if expired else None)
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
    def dead_letter(self, raw: Any, topic: str, partition: int, offset: int, reason: str, kind: str) -> Emit:
        self._count("dead_letters")
        dl = DeadLetter.from_input(raw, source_topic=topic, partition=partition, offset=offset,
                                   reason=reason, error_type=kind, source=self.source, key=topic)
        return Emit("deadletter", topic, dl.model_dump_json().encode())

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


__all__ = ["Clock", "Emit", "Event", "SymbolEngine", "TICK_TYPE", "state_key", "tick_record"]
