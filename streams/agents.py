"""The agents: each decodes nothing itself, calls one engine method per record and sends what it
returns; the timer closes idle windows and watches for stalled input (``streams.health``).
Every record first passes the agent's input cursor (``streams.cursor``): Faust's consumer can
skip records, and only the agent knows which offsets it has processed. Before the symbols agent
processes a partition, the in-memory market state of that partition is rebuilt from the log up
to its cursor (``streams.rebuild``)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable, Iterable

import faust
from faust.types import TP

from schemas.settings import StreamsSettings
from streams.cursor import GAP, PROCESS, InputCursor
from streams.engine import Emit, SymbolEngine, tick_record
from streams.health import STALL_EXIT_CODE, WorkerHealth
from streams.rebuild import rebuild_partition
from streams.routers import RouterBacklog
from streams.topology import Topology

log = logging.getLogger(__name__)


async def _send(topo: Topology, emits: Iterable[Emit]) -> None:
    for e in emits:
        await topo.outputs[e.topic].send(key=e.key.encode(), value=e.value)


def _where(event: faust.EventT) -> dict:
    m = event.message
    return {"topic": m.topic, "partition": m.partition, "offset": m.offset}


def _guarded(engine: SymbolEngine, handle: Callable[..., list[Emit]], event: faust.EventT,
             **kw: object) -> list[Emit]:
    """A record that breaks the engine is dead-lettered with the error; the agent keeps going."""
    try:
        return handle(event.value, **_where(event), **kw)
    except Exception as e:  # noqa: BLE001 - any failure of one record must not stop the stream
        log.exception("record %s failed", _where(event))
        return [engine.dead_letter(event.value, reason=f"processing failed: {e!r}", kind=type(e).__name__,
                                   **_where(event))]


Rebuild = Callable[[tuple[str, int], int, int, "int | None"], Awaitable[None]]


class InputGuard:
    """One agent's input cursor plus the consumer calls it needs (first offsets, seek, flush).

    ``state_topic``: the input whose partitions carry in-memory state (market.events for the
    symbols agent). Starting any partition number also starts that topic's partition of the
    same number (co-partitioned), and ``rebuild(tp, cursor, earliest, mark)`` restores its state
    before the cursors start, so no record of that partition number is processed before it.
    ``mark(tp)``: what to persist with that partition's cursor for the next rebuild."""

    def __init__(self, app: faust.App, cursor: InputCursor, name: str, *, state_topic: str | None = None,
                 rebuild: Rebuild | None = None, mark: Callable[[tuple[str, int]], int | None] | None = None):
        self.app, self.cursor, self.name = app, cursor, name
        self.state_topic, self.rebuild, self.mark = state_topic, rebuild, mark
        self._starting = asyncio.Lock()  # the agent and the timer both start partitions
        # moves on at every revocation: a start that was awaiting the broker (a rebuild) when
        # its partitions were taken away must not mark them started for the next assignment
        self.generation = 0

    def forget_all(self) -> None:
        """A rebalance: every partition starts again from the persisted cursor (and, for the
        state topic, a rebuild), as after a restart."""
        self.generation += 1
        self.cursor.forget(list(self.cursor.next))

    async def start(self, tps: Iterable[tuple[str, int]]) -> None:
        tps = list(tps)
        if self.state_topic is not None:
            tps += [(self.state_topic, p) for p in {tp[1] for tp in tps}]
        async with self._starting:
            generation = self.generation
            todo = sorted({tp for tp in tps if not self.cursor.started(tp)})
            if not todo:
                return
            earliest = await self.app.consumer.earliest_offsets(*(TP(*tp) for tp in todo))
            first = {tp: earliest.get(TP(*tp)) or 0 for tp in todo}
            if self.rebuild is not None:
                for tp in todo:
                    if tp[0] == self.state_topic and generation == self.generation:
                        await self.rebuild(tp, self.cursor.resume_at(tp, first[tp]), first[tp],
                                           self.cursor.saved_mark(tp))
            if generation != self.generation:
                log.warning("%s: partitions revoked while starting %s: they start again when assigned",
                            self.name, todo)
                return
            for tp in todo:
                at = self.cursor.start(tp, first[tp])
                # at warning, like the rebuild: which worker took which partition, and from where
                log.warning("%s: %s:%d resumes at offset %d", self.name, tp[0], tp[1], at)

    async def admit(self, event: faust.EventT) -> bool:
        """Process this record? Below the cursor: no (done before). Above it: no, and seek back."""
        m = event.message
        tp = (m.topic, m.partition)
        if not self.cursor.started(tp):
            await self.start([tp])
        verdict = self.cursor.check(tp, m.offset)
        if verdict == PROCESS:
            return True
        if verdict == GAP:
            await self.seek_back(tp, f"offset {m.offset} delivered")
        return False

    async def seek_back(self, tp: tuple[str, int], why: str) -> None:
        target = self.cursor.seek_target(tp, time.monotonic())
        if target is not None:
            first = (await self.app.consumer.earliest_offsets(TP(*tp))).get(TP(*tp))
            lost = self.cursor.skip_to(tp, first) if first is not None else None
            if lost is not None:
                # a seek below the log start would be reset to it by the client, and the cursor
                # would wait forever for records that no longer exist
                log.error("%s: %s:%d offsets %d..%d were deleted by retention before they were processed: "
                          "skipping to %d", self.name, tp[0], tp[1], lost, first - 1, first)
                target = self.cursor.seek_target(tp, time.monotonic())
            # after a restart this is the usual case: Faust resumes at its committed offset, which
            # is ahead of the last persisted cursor; otherwise its consumer skipped records
            log.warning("%s: %s:%d %s, next to process is %d: seeking back", self.name, tp[0], tp[1], why, target)
            await self.app.consumer.seek_wait({TP(*tp): target})

    async def done(self, event: faust.EventT) -> None:
        m = event.message
        self.cursor.done((m.topic, m.partition), m.offset)
        now = time.monotonic()
        if self.cursor.persist_due(m.partition, now):
            snap = self.cursor.snapshot(m.partition)
            marks = {tp: self.mark(tp) for tp in snap if tp[0] == self.state_topic} if self.mark else None
            await self.app.producer.flush()  # what the snapshot covers is on the broker
            self.cursor.persist(snap, m.partition, now, marks)


def _caught_up(cursor: InputCursor, tp: tuple[str, int],
               highwater: Callable[[tuple[str, int]], int | None]) -> bool | None:
    """Has the agent *processed* everything of this partition? None when it cannot tell.

    From the agent's cursor: Faust's read offset counts records fetched into the stream's buffer,
    which the agent may not have seen yet, and its committed offset can be past records it never
    delivered (``streams.cursor``). Either would make a backlog look idle and jump the clock."""
    try:
        high = highwater(tp)
    except (KeyError, AssertionError, AttributeError):  # consumer not started or partition not assigned
        return None
    nxt = cursor.next.get(tuple(tp))
    if high is None or nxt is None:
        return None
    return nxt >= high


class EngineSlot:
    """The engine the agents and the timer use now. A rebalance puts a fresh one in: the
    in-memory state of every partition (book, agenda, outcomes of open groups, event-time clock)
    is dropped and rebuilt on assignment, exactly as after a restart. Kept instead, the state of
    a partition that went to another worker could come back with it, behind what that worker
    processed meanwhile, and a clock ahead of the rebuilt book scores candidates on quotes it
    does not hold yet. The changelog-backed tables (pending candidates, closed groups, cursors)
    are Faust's and stay; they may also hold other workers' partitions (standby replicas), whose
    groups never reach this worker's records or clock."""

    def __init__(self, new: Callable[[], SymbolEngine]):
        self.new = new
        self.engine = self.fresh()

    def fresh(self) -> SymbolEngine:
        self.engine = self.new()
        self.engine.hold_expiry = True  # until the timer has seen the candidate path caught up
        return self.engine


def register(app: faust.App, topo: Topology, new_engine: Callable[[], SymbolEngine], conf: StreamsSettings,
             client_kw: dict) -> None:
    """``new_engine``: a fresh engine over the topology's tables (one at start, one per
    rebalance). ``client_kw``: aiokafka client arguments, for reading the market log again on
    assignment."""
    internal = topo.internal.get_topic_name()
    market_topic = topo.market.get_topic_name()
    slot = EngineSlot(new_engine)

    async def rebuild(tp: tuple[str, int], cursor: int, earliest: int, mark: int | None) -> None:
        engine = slot.engine  # a rebalance meanwhile replaces it, and what this read fills is dropped
        held, engine.hold_expiry = engine.hold_expiry, True  # keep all that is read: it was held then
        try:
            wall = time.time_ns()  # one stamp for the whole read: it takes well under a second
            await rebuild_partition(client_kw, tp, cursor, earliest, mark, conf.market_window_s,
                                    lambda raw, **at: engine.rebuild_record(raw, wall_ns=wall, **at))
        finally:
            engine.hold_expiry = held
        engine.restore_agenda()  # the pending candidates of this partition are recovered by now

    routed = InputGuard(app, InputCursor(topo.action_cursors), "route-actions")
    symbols_in = InputGuard(app, InputCursor(topo.cursors), "symbols", state_topic=market_topic, rebuild=rebuild,
                            mark=lambda tp: slot.engine.book_start(tp))
    actions_topic = topo.actions.get_topic_name()
    guards = {actions_topic: routed, internal: symbols_in, market_topic: symbols_in}

    @app.agent(topo.actions, name="route-actions")
    async def route_actions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if await routed.admit(event):
                engine = slot.engine
                await _send(topo, _guarded(engine, engine.route_action, event))
                await routed.done(event)

    @app.agent(topo.symbol_inputs, name="symbols")
    async def symbols(stream: faust.StreamT) -> None:
        # One record at a time, tables written through: Faust flushes what a record wrote
        # before it commits the input offset, so a kill -9 between records loses nothing.
        # Batching the table writes behind the offsets breaks that order.
        async for event in stream.events():
            if await symbols_in.admit(event):
                engine = slot.engine
                handle = engine.on_internal if event.message.topic == internal else engine.on_market
                await _send(topo, _guarded(engine, handle, event, wall_ns=time.time_ns()))
                await symbols_in.done(event)

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: faust.App, revoked: set[TP], **kwargs: object) -> None:
        # aiokafka rebalances eagerly: each rebalance revokes the whole assignment first. Faust
        # has waited for the agents to finish their current record and flushed the producer.
        # Every partition kept or newly assigned starts again as after a restart: from its
        # persisted cursor, its market state rebuilt from the log, its agenda from the pending
        # candidates; none of the state of a partition given away is used again.
        if not any(tp.topic in guards for tp in revoked):
            return
        for guard in (routed, symbols_in):
            guard.forget_all()
        slot.fresh()
        log.warning("partitions revoked: %s; in-memory market state dropped, rebuilt on assignment",
                    sorted(f"{tp.topic}:{tp.partition}" for tp in revoked if tp.topic in guards))

    state = WorkerHealth(conf.stall_after_s, conf.stall_exit_s)

    def highwater(tp: tuple[str, int]) -> int | None:
        return state.highwater(tp, app.consumer.highwater(TP(*tp)))

    def positions() -> dict[tuple[str, int], int]:
        return {**routed.cursor.positions(), **symbols_in.cursor.positions()}

    ends_probe: asyncio.Task | None = None

    async def refresh_ends() -> None:
        try:
            got = await app.consumer.highwaters(*(TP(*tp) for tp in positions()))
        except Exception as e:  # noqa: BLE001 - a failed probe leaves the last answer in place
            log.warning("end offsets unavailable: %r", e)
            return
        state.ends.update({(tp.topic, tp.partition): off for tp, off in got.items() if off is not None})

    routers = RouterBacklog(client_kw, app.conf.id, actions_topic, topo.action_cursors.partitions,
                            topo.action_cursors.changelog_topic_name)

    @app.task
    async def watch_other_routers() -> None:
        # in its own task: each probe asks the broker, which the idle timer must not wait for
        try:
            async for _ in app.itertimer(1.0, name="watch_other_routers"):
                if state.ready:
                    await routers.probe({tp.partition for tp in app.consumer.assignment()
                                         if tp.topic == actions_topic})
        finally:
            await routers.stop()

    @app.timer(interval=conf.idle_tick_s)
    async def close_idle_windows() -> None:
        nonlocal ends_probe
        # ticks go through the partition that owns the symbol, so only its agent touches state
        # Faust sets ``completed`` after the first recovery only; while a rebalance's recovery
        # runs (``rebalancing``), the newly assigned partitions' tables are not complete yet
        if app.tables.recovery.completed.is_set() and not app.rebalancing:
            # every assigned input partition gets a cursor, so one that never delivers is seen;
            # the symbols' cursors start once their market state is rebuilt from the log
            assigned = [(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in guards]
            for guard in (routed, symbols_in):
                await guard.start([tp for tp in assigned if guards[tp[0]] is guard])
            if not state.ready:
                state.ready = True
                print("streams worker ready", flush=True)  # supervisors and tests wait for this line
            # a candidate may still come from the past unless its whole path (agent.actions, the
            # internal topic) is processed to the end, here and by the other workers' routers
            # (``streams.routers``): hold market expiry until then
            candidate_path = [tp for tp in assigned if tp[0] in (actions_topic, internal)]
            engine = slot.engine
            engine.hold_expiry = routers.behind or not candidate_path or not all(
                _caught_up(guards[tp[0]].cursor, tp, highwater) for tp in candidate_path)
            for symbol, sk, t in engine.idle_due(time.time_ns(),
                                                 caught_up=lambda tp: _caught_up(symbols_in.cursor, tp, highwater)):
                if engine is not slot.engine:
                    break  # a rebalance meanwhile: the rest was computed on state given up
                await topo.internal.send(key=symbol.encode(), value=tick_record(sk, t))
            # consumer-thread calls below can each take a fetch wait (up to 0.5 s): after the
            # ticks, and the end-offset probe in the background, so idle windows close on time
            now = time.monotonic()
            if state.wants_ends(now) and (ends_probe is None or ends_probe.done()):
                ends_probe = asyncio.create_task(refresh_ends())
            for guard in (routed, symbols_in):
                for tp in guard.cursor.overdue(now):
                    await guard.seek_back(tp, "still missing after a seek")
            if state.observe(positions(), highwater, now):
                for tp, s in state.stalled.items():
                    await guards[tp[0]].seek_back(tp, f"stalled {s['stuck_s']} s behind {s['highwater']}")
                _report_stall(app, state, now)

    @app.page("/healthz")
    async def healthz(web, request):  # noqa: ANN001 - faust's view signature
        status, body, _, _ = state.probes()
        return web.json(body, status=status)

    @app.page("/readyz")
    async def readyz(web, request):  # noqa: ANN001
        _, _, status, body = state.probes()
        return web.json(body, status=status)


def _report_stall(app: faust.App, state: WorkerHealth, now: float) -> None:
    """Say what the consumer looks like while a partition is stuck; exit once the worker is wedged
    (``streams.health.wedged``)."""
    stalled = state.stalled
    if state.should_report(now):
        c = app.consumer
        # no_progress_s small: the worker is busy with other input and these partitions wait their turn
        log.warning("streams worker stalled: %s no_progress_s=%s read=%s paused=%s buffered=%s flow_active=%s "
                    "app_flow=%s producer_buffer=%s fetch=%s", stalled, state.no_progress_s,
                    {tp: c._read_offset.get(TP(*tp)) for tp in stalled},
                    sorted(tp for tp in map(tuple, c._paused_partitions) if tp in stalled),
                    c._buffered_partitions, c.flow_active, app.flow_control.is_active(), app.producer.buffer.size,
                    _fetch_state(c, stalled))
    if state.exit_due():
        # at-least-once: a restart resumes from the persisted input cursors and loses nothing (the same
        # path as a kill -9, which the tests exercise); outputs are deduplicated by event_id
        log.error("streams worker stalled past %.0f s with no input processed meanwhile: exiting for the "
                  "supervisor to restart it", state.exit_after_s)
        logging.shutdown()
        os._exit(STALL_EXIT_CODE)


def _fetch_state(consumer, tps) -> dict:
    """aiokafka's view of the stuck partitions (private attributes: diagnostics only)."""
    try:
        from aiokafka.structs import TopicPartition

        ak = consumer._thread._ensure_consumer()
        out = {}
        for tp in tps:
            st = ak._subscription.subscription.assignment.state_value(TopicPartition(*tp))
            rec = ak._fetcher._records.get(TopicPartition(*tp))
            out[tp] = dict(position=st._position, status=str(st._status), paused=st.paused, highwater=st.highwater,
                           records=type(rec).__name__ if rec is not None else None,
                           in_flight=sorted(ak._fetcher._in_flight))
        return out
    except Exception as e:  # noqa: BLE001 - a diagnostic must never take the worker down
        return {"unavailable": repr(e)}
