"""The agents: each decodes nothing itself, calls one engine method per record and sends what it
returns; the timer closes idle windows and watches for stalled input (``streams.health``)."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable

import faust
from faust.types import TP

from schemas.settings import StreamsSettings
from streams.engine import Emit, SymbolEngine, tick_record
from streams.health import STALL_EXIT_CODE, WorkerHealth
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


def _caught_up(app: faust.App, engine: SymbolEngine, tp: tuple[str, int],
               highwater: Callable[[tuple[str, int]], int | None]) -> bool | None:
    """Has the engine *processed* everything of this partition? None when it cannot tell.

    Faust's own read offset counts records fetched into the stream's buffer, which the agent may
    not have seen yet (a stalled agent would then look idle and jump its clock ahead)."""
    try:
        committed = app.consumer._committed_offset.get(TP(*tp))  # next offset to read after a restart
        high = highwater(tp)
    except (KeyError, AssertionError, AttributeError):
        return None
    if high is None:
        return None
    done = engine.processed.get(tuple(tp))
    if done is not None:
        return done + 1 >= high
    return None if committed is None else committed >= high


def register(app: faust.App, topo: Topology, engine: SymbolEngine, conf: StreamsSettings) -> None:
    internal = topo.internal.get_topic_name()

    @app.agent(topo.actions, name="route-actions")
    async def route_actions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await _send(topo, _guarded(engine, engine.route_action, event))

    @app.agent(topo.symbol_inputs, name="symbols")
    async def symbols(stream: faust.StreamT) -> None:
        # One record at a time, tables written through. A batched version (write-behind views,
        # one changelog record per key per batch) was tried and lost groups across kill -9 in
        # the stricter kill test; see the issue note.
        async for event in stream.events():
            handle = engine.on_internal if event.message.topic == internal else engine.on_market
            await _send(topo, _guarded(engine, handle, event, wall_ns=time.time_ns()))

    state = WorkerHealth(conf.stall_after_s, conf.stall_exit_s)

    def highwater(tp: tuple[str, int]) -> int | None:
        return state.highwater(tp, app.consumer.highwater(TP(*tp)))

    async def refresh_ends() -> None:
        try:
            got = await app.consumer.highwaters(*(TP(*tp) for tp in engine.processed))
        except Exception as e:  # noqa: BLE001 - a failed probe leaves the last answer in place
            log.warning("end offsets unavailable: %r", e)
            return
        state.ends.update({(tp.topic, tp.partition): off for tp, off in got.items() if off is not None})

    @app.timer(interval=conf.idle_tick_s)
    async def close_idle_windows() -> None:
        # ticks go through the partition that owns the symbol, so only its agent touches state
        if app.tables.recovery.completed.is_set():
            if not state.ready:
                state.ready = True
                print("streams worker ready", flush=True)  # supervisors and tests wait for this line
            now = time.monotonic()
            if engine.processed and state.wants_ends(now):
                await refresh_ends()
            if state.observe(dict(engine.processed), highwater, now):
                _report_stall(app, state, now)
            for symbol, sk, t in engine.idle_due(time.time_ns(),
                                                 caught_up=lambda tp: _caught_up(app, engine, tp, highwater)):
                await topo.internal.send(key=symbol.encode(), value=tick_record(sk, t))

    @app.page("/healthz")
    async def healthz(web, request):  # noqa: ANN001 - faust's view signature
        status, body, _, _ = state.probes()
        return web.json(body, status=status)

    @app.page("/readyz")
    async def readyz(web, request):  # noqa: ANN001
        _, _, status, body = state.probes()
        return web.json(body, status=status)


def _report_stall(app: faust.App, state: WorkerHealth, now: float) -> None:
    """Say what the consumer looks like while a partition is stuck; exit once it is stuck too long."""
    stalled = state.stalled
    if state.should_report(now):
        c = app.consumer
        log.warning("streams worker stalled: %s read=%s paused=%s buffered=%s flow_active=%s app_flow=%s "
                    "producer_buffer=%s fetch=%s", stalled, {tp: c._read_offset.get(TP(*tp)) for tp in stalled},
                    sorted(tp for tp in map(tuple, c._paused_partitions) if tp in stalled),
                    c._buffered_partitions, c.flow_active, app.flow_control.is_active(), app.producer.buffer.size,
                    _fetch_state(c, stalled))
    if state.exit_due():
        # at-least-once: a restart resumes from the committed offsets and loses nothing (the same
        # path as a kill -9, which the tests exercise); outputs are deduplicated by event_id
        log.error("streams worker stalled past %.0f s: exiting for the supervisor to restart it", state.exit_after_s)
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
