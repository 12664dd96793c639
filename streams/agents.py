"""The agents: each decodes nothing itself, calls one engine method and sends what it returns."""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import faust
from faust.types import TP

from streams.engine import Emit, SymbolEngine, tick_record
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


def _caught_up(app: faust.App, tp: tuple[str, int]) -> bool | None:
    """Has the consumer read everything of this partition? None when it cannot tell."""
    consumer = app.consumer
    topic_partition = TP(*tp)
    try:
        high = consumer.highwater(topic_partition)
        read = consumer._read_offset[topic_partition]  # faust keeps no public read position
        committed = consumer._committed_offset.get(topic_partition)  # next offset to read after a restart
    except (KeyError, AssertionError, AttributeError):
        return None
    if high is None:
        return None
    if read is not None:
        return read + 1 >= high
    return None if committed is None else committed >= high


def register(app: faust.App, topo: Topology, engine: SymbolEngine, tick_s: float) -> None:
    internal = topo.internal.get_topic_name()

    @app.agent(topo.actions, name="route-actions")
    async def route_actions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await _send(topo, _guarded(engine, engine.route_action, event))

    @app.agent(topo.symbol_inputs, name="symbols")
    async def symbols(stream: faust.StreamT) -> None:
        async for event in stream.events():
            handle = engine.on_internal if event.message.topic == internal else engine.on_market
            await _send(topo, _guarded(engine, handle, event, wall_ns=time.time_ns()))

    ready: list[bool] = []

    @app.timer(interval=tick_s)
    async def close_idle_windows() -> None:
        # ticks go through the partition that owns the symbol, so only its agent touches state
        if app.tables.recovery.completed.is_set():
            if not ready:
                ready.append(True)
                print("streams worker ready", flush=True)  # supervisors and tests wait for this line
            for symbol, sk, now in engine.idle_due(time.time_ns(), caught_up=lambda tp: _caught_up(app, tp)):
                await topo.internal.send(key=symbol.encode(), value=tick_record(sk, now))
