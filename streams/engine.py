"""The per-symbol stream processor, written against plain mappings so it runs without Faust.

The market state (``book``, ``index``) is a pure function of the recent market log, so in the
Faust worker it lives in memory and is rebuilt from the log after a restart or a rebalance
(``rebuild_record``, driven by ``streams.rebuild``). The ``agenda`` is a function of ``pending``:
in memory too, rebuilt by ``restore_agenda``. The small state (``pending``, ``closed``) is in
changelog-backed Faust tables. In tests and in the PyFlink job all of them can
be dicts or keyed state. The Faust agents only decode nothing, call one method here and send
what it returns (``Emit``s).

State (values are the records of ``streams.state``; ``sk`` is ``"exchange|symbol"``): ``book``
and ``index`` (``streams.market_book``); ``pending``: ``group_id -> PendingGroup``, whose outcomes
scored so far are in memory (``scored``: a restart scores them again on the rebuilt book);
``agenda``: ``sk -> AgendaEntry``, when something next falls due; ``closed``: ``sk ->
ClosedGroups``, so replayed or late candidates of closed groups are dropped instead of re-opening
them (kept ``CLOSED_RETENTION_NS`` of event time). ``pending`` and ``closed`` hold the records'
JSON forms (``streams.state.StoredRecords``), as changelog-backed tables need.

Time: outcomes are due when the horizon has passed in event time, i.e. a market event *after*
``t0 + horizon`` was seen (the touch at the horizon is then final); candidates never advance
event time (in catch-up they run ahead of the market data). ``Clock`` is derived, in-memory: the
market watermark per ``sk`` plus, for idle streams, an estimate that advances with the wall
clock from the last event's ``ts_ingest``. The estimate is used only by timer ticks, after
``idle_after_s`` without events for that ``sk`` and (in the worker) only when the agent has
processed all of the market partition (its input cursor at the end offset, ``streams.cursor``),
which keeps catch-up on the watermark and deterministic.
Groups close ``all_in`` on events; ``expired`` only on ticks (``schemas.stream.StreamTick``,
see ``_advance``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, MutableMapping

from schemas.agent import Action, Outcome
from schemas.base import Event
from schemas.codec import DecodeError, decode, encode
from schemas.deadletter import DeadLetter
from schemas.market import BookTicker, DepthUpdate, MarketTrade, MarketWatermark, StreamGap
from schemas.settings import GroupConfig, RewardConfig
from schemas.stream import StreamTick, decode_internal
from streams.clock import Clock
from streams.market_book import MarketBook, state_key
from streams.grouping import close_group, outcome_final, window_end_ns
from streams.rewards import horizon_end_ns, score_action, to_outcome
from streams.state import (CLOSED, NEVER, PENDING, AgendaEntry, ClosedGroups, GroupDue, PendingCandidate,
                           PendingGroup, StoredRecords)

CLOSED_RETENTION_NS = 600 * 1_000_000_000
IGNORED_MARKET = (DepthUpdate, StreamGap)  # valid records the paper fill does not use


@dataclass(frozen=True)
class Emit:
    """One record to send: catalogue topic name (or ``"internal"``), key, payload."""

    topic: str
    key: str
    value: bytes


def idle_tick(sk: str, now: int = 0) -> StreamTick:
    """A timer tick: close what is due for ``sk`` at estimated event time ``now`` (0: none)."""
    exchange, symbol = sk.split("|", 1)
    return StreamTick(exchange=exchange, symbol=symbol, event_time_ns=now, key=symbol, source="streams")


def tick_record(sk: str, now: int = 0) -> bytes:
    """``idle_tick`` as the record the timer sends through the internal topic."""
    return encode(idle_tick(sk, now))


class SymbolEngine(MarketBook):
    """Market state (``streams.market_book``), pending candidates, outcomes and group closing for
    the symbols it owns."""

    def __init__(self, reward: RewardConfig, groups: GroupConfig, *, pending: MutableMapping,
                 closed: MutableMapping, agenda: MutableMapping | None = None, book: MutableMapping | None = None,
                 index: MutableMapping | None = None, tp_store: MutableMapping | None = None,
                 scored: MutableMapping | None = None, bucket_s: float = 1.0,
                 market_window_s: float = 60.0, idle_after_s: float = 0.25, idle_close: bool = True,
                 source: str = "streams"):
        super().__init__(book=book, index=index, tp_store=tp_store, bucket_s=bucket_s,
                         market_window_s=market_window_s)
        self.reward, self.groups = reward, groups
        # changelog-backed tables hold JSON: the records go in and out through their stored form
        self.pending = StoredRecords.over(pending, PENDING)
        self.closed = StoredRecords.over(closed, CLOSED)
        self.agenda = {} if agenda is None else agenda
        self.grace_ns = round(groups.grace_s * 1e9)
        self.clock = Clock(idle_after_s)
        # off for a loop-paced replay: its input pauses while the loop works, and a wall-clock
        # estimate would then score candidates on a book still missing the quotes to come
        self.idle_close = idle_close
        self.source = source
        self.counters: dict[str, int] = {}
        # group_id -> candidate index -> outcome JSON, of groups still open. In memory for the
        # Faust worker: an outcome is a pure function of the book, which a restart rebuilds, so it
        # is scored again (same event_id, deduped downstream) instead of costing a changelog write
        # of the whole group per scoring. The Flink job passes checkpointed state instead: its
        # exactly-once sink must not emit an outcome that a restored checkpoint already committed.
        self.scored: MutableMapping = {} if scored is None else scored

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

    def rebuild_record(self, raw: bytes | None, *, topic: str, partition: int, offset: int, wall_ns: int) -> None:
        """A market record read again up to the input cursor (``streams.rebuild``): the book and
        the symbol's event time come back as they were when it was first processed. Event time
        must come back too: a trade or a watermark after the last quote moved it, and a candidate
        routed after the restart whose horizon that time has passed is final at once, as it was
        for the worker before the restart; from the last quote alone it would wait for market
        data that may never come."""
        ev = self.rebuild_quote(raw, topic=topic, partition=partition, offset=offset)
        if ev is not None:
            self.clock.observe(state_key(ev.exchange, ev.symbol), ev.ts_event, ev.ts_ingest, wall_ns)

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
            sk = state_key(ev.exchange, ev.symbol)  # moves event time only: no reward reads trades
        elif isinstance(ev, MarketWatermark):
            sk = state_key(ev.exchange, ev.symbol)  # moves event time only: what it makes final closes
        elif isinstance(ev, IGNORED_MARKET):
            return []
        else:
            return [self.dead_letter(raw, topic, partition, offset, f"type: {ev.type} does not belong on market.events",
                               "OutOfSchema")]
        now = self.clock.observe(sk, ev.ts_event, ev.ts_ingest, wall_ns)
        if self.tps.get(sk) != (topic, partition):
            self._set_tp(sk, (topic, partition))
        due = self.agenda.get(sk)
        if due is not None and outcome_final(due.due_ns, now):
            return self._resolve(sk, now, wall_ns)
        return []

    def on_internal(self, raw: bytes | None, *, topic: str, partition: int = -1, offset: int = -1,
                    wall_ns: int) -> list[Emit]:
        """A routed action, or a timer tick (``StreamTick``) asking to close idle windows of one symbol."""
        try:
            action = decode_internal(raw)
        except DecodeError as e:
            return [self.dead_letter(raw, topic, partition, offset, e.reason, "DecodeError")]
        if isinstance(action, StreamTick):
            return self.on_tick(action, wall_ns=wall_ns)
        if not isinstance(action, Action):
            return [self.dead_letter(raw, topic, partition, offset, f"type: unexpected {action.type}", "OutOfSchema")]
        sk = state_key(action.exchange, action.symbol)
        if not self._add_action(sk, action, wall_ns):
            return []
        # candidates never advance event time: in catch-up they can run ahead of the market data.
        # An unseen symbol (a restart) starts at its last stored quote; at the candidate's t0 it
        # would score restored candidates on a book still missing the quotes to be replayed. Only
        # a symbol with no stored book at all starts at t0 (so idle handling has a reference).
        self.clock.seed(sk, self.last_quote_ts(sk) or action.ts_event, wall_ns)
        return self._resolve(sk, self.clock.watermark(sk), wall_ns)

    def on_tick(self, tick: StreamTick, *, wall_ns: int) -> list[Emit]:
        """Score what is due and close what has expired for the tick's symbol, at the later of
        the timer's estimate and the symbol's watermark."""
        sk = state_key(tick.exchange, tick.symbol)
        return self._resolve(sk, max(tick.event_time_ns, self.clock.watermark(sk)), wall_ns, expire=True)

    def idle_due(self, wall_ns: int, caught_up: Callable[[tuple[str, int]], bool | None] | None = None,
                 ) -> list[tuple[str, str, int]]:
        """``(symbol, sk)`` whose agenda is due by the idle estimate: the timer ticks these.

        ``caught_up(topic, partition)``: whether the consumer has read all of that market
        partition (True), still has a backlog (False: then the stream is not idle), or unknown.
        """
        out = []
        for sk, entry in list(self.agenda.items()):
            self.clock.seed(sk, self.last_quote_ts(sk), wall_ns)  # no-op unless unseen since start
            tp = self.market_tp(sk)
            state = caught_up(tp) if caught_up is not None and tp is not None else None
            # with a lag probe, idle means "read everything": unknown (e.g. still joining the
            # consumer group after a restart) is not idle, or a backlog would be skipped
            idle = None if (not self.idle_close or (caught_up is not None and state is not True)) else \
                self.clock.idle_now(sk, wall_ns, caught_up=bool(state))
            now = idle or self.clock.watermark(sk)
            if (idle is not None and outcome_final(entry.due_ns, idle)) or (entry.expiry_ns < now and
                                                              wall_ns >= entry.grace_end_wall_ns):
                out.append((sk.split("|", 1)[1], sk, now))
        return out

    # ---- candidates, outcomes, groups ---------------------------------------------------
    def _add_action(self, sk: str, action: Action, wall_ns: int) -> bool:
        closed = self.closed.get(sk)
        if closed is not None and action.group_id in closed:
            self._count("late_or_replayed_actions")
            return False
        g = self.pending.get(action.group_id)
        idx = action.candidate_index
        if g is not None and idx in g.candidates:
            return False  # replayed after a restart
        candidate = PendingCandidate(action.model_dump_json(), horizon_end_ns(action))
        g = PendingGroup.first(sk, idx, candidate, action.ts_event, wall_ns) if g is None else \
            g.with_candidate(idx, candidate, action.ts_event, wall_ns)
        self.pending[action.group_id] = g
        self._schedule(sk, action.group_id, g)
        return True

    def restore_agenda(self) -> None:
        """Derive the agenda from the pending groups (after a restart or an assignment: it has no
        changelog, it would cost two writes per candidate for what ``pending`` already says)."""
        for gid, g in list(self.pending.items()):
            self._schedule(g.state_key, gid, g)

    def _outcomes(self, gid: str, g: PendingGroup) -> dict[int, str]:
        return {**g.stored_outcomes, **self.scored.get(gid, {})}

    def _window_end(self, g: PendingGroup) -> int:
        return window_end_ns(g.t0_ns, g.horizon_ends(), self.groups.grace_s)

    def _schedule(self, sk: str, gid: str, g: PendingGroup | None) -> None:
        """The agenda entry of ``sk`` with group ``gid`` as ``g`` now is (None: closed or gone):
        its next outcome (event-driven), its window end, and the wall time before which the
        window may not expire (see ``_advance``)."""
        entry = self.agenda.get(sk)
        groups = dict(entry.groups) if entry is not None else {}
        if g is None:
            groups.pop(gid, None)
        else:
            done = self._outcomes(gid, g)
            todo = [c.horizon_end_ns for i, c in g.candidates.items() if i not in done]
            groups[gid] = GroupDue(min(todo) if todo else NEVER, self._window_end(g),
                                   g.last_arrival_wall_ns + self.grace_ns)
        entry = AgendaEntry.of(groups)
        if entry is not None:
            self.agenda[sk] = entry
        elif sk in self.agenda:
            del self.agenda[sk]

    def _resolve(self, sk: str, now: int, wall_ns: int, expire: bool = False) -> list[Emit]:
        """Score every candidate whose horizon is before ``now``; close groups that are done.
        Only timer ticks (``expire``) close groups by expiry; events close complete groups."""
        entry = self.agenda.get(sk)
        if entry is None or (entry.due_ns >= now and not expire):
            return []
        out: list[Emit] = []
        for gid, due in sorted(entry.groups.items(), key=lambda kv: kv[1]):
            if gid not in self.pending:  # its partition was taken away by a rebalance
                self.scored.pop(gid, None)
                self._schedule(sk, gid, None)
                continue
            if outcome_final(due.due_ns, now) or (expire and due.window_end_ns < now and wall_ns >= due.grace_end_wall_ns):
                out.extend(self._advance(sk, gid, now, wall_ns, expire))
        return out

    def _advance(self, sk: str, gid: str, now: int, wall_ns: int, expire: bool) -> list[Emit]:
        g = self.pending[gid]
        actions = {i: Action.model_validate_json(c.action_json) for i, c in g.candidates.items()}
        outcomes = self._outcomes(gid, g)
        out: list[Emit] = []
        for i, action in sorted(actions.items()):
            horizon_end = g.candidates[i].horizon_end_ns
            if i not in outcomes and outcome_final(horizon_end, now):
                t0 = action.ts_event
                book = self.book_path(sk, t0 + round(self.reward.latency_ms * 1e6), horizon_end)
                o = to_outcome(action, score_action(action, self.reward, book), ts_ingest=wall_ns,
                               source=self.source)
                outcomes[i] = o.model_dump_json()
                out.append(Emit("agent.outcomes", gid, o.model_dump_json().encode()))
        size = next(iter(actions.values())).group_size
        end = self._window_end(g)
        # expiry needs the window over in event time *and* grace_s of wall time since the first
        # candidate arrived: a group opened late (replay, catch-up) still gathers its siblings
        expired = expire and end < now and wall_ns - g.last_arrival_wall_ns >= self.grace_ns
        reason = "all_in" if len(outcomes) >= size else ("expired" if expired else None)
        if reason is None:
            self.scored[gid] = outcomes
            self._schedule(sk, gid, g)
            return out
        group = close_group(list(actions.values()),
                            {i: Outcome.model_validate_json(o) for i, o in outcomes.items()},
                            self.groups, close_reason=reason, window_end=end, ts_ingest=wall_ns,
                            source=self.source)
        out.append(Emit("learn.groups", gid, group.model_dump_json().encode()))
        self._count(f"groups_{group.status}")
        closed = self.closed.get(sk, ClosedGroups())
        self.closed[sk] = closed.with_closed(gid, end, CLOSED_RETENTION_NS)
        del self.pending[gid]
        self.scored.pop(gid, None)
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


__all__ = ["Clock", "Emit", "Event", "SymbolEngine", "idle_tick", "state_key", "tick_record"]
