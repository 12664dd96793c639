"""The daemon's end of a loop-paced replay (``daemon.tools.capture_servers.lockstep``): acknowledge each replayed
frame once everything it set off is done, and hear when the replay ends.

"Done" means: every data frame received over the replay connections has been handled by its
source (records sent to Kafka, context updated), every market stream waits in ccxt for its next
frame, and the actor has taken every decision that came due. The learner is not waited for
here: the actor waits for the groups due by then (``DueGroups``) before it samples, which is the
only place the weights meet the input.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable

import websockets

from daemon.logging import get_logger

log = get_logger("pace")


class PaceLink:
    """Args: ``url`` of the replay's pace endpoint; ``sources`` with ``frames_in``, ``quiescent()``
    and an ``on_progress`` hook (``MarketSource``, ``JetstreamSource``); ``actor_idle``;
    ``on_end(frames)`` when a pass of the replay is over, ``on_pass(k)`` when pass k begins."""

    def __init__(self, url: str, sources: list[Any], actor_idle: Callable[[], bool],
                 on_end: Callable[[int], Awaitable[None]], on_pass: Callable[[int], None] | None = None) -> None:
        self.url = url
        self.sources = sources
        self.actor_idle = actor_idle
        self.on_end = on_end
        self.on_pass = on_pass
        self.passes = 0
        self.ended = False
        self.connected = False
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for src in sources:
            src.on_progress = self.poke

    def poke(self) -> None:
        """Something was handled: look again (after the caller has suspended)."""
        self._poke.set()

    def frames(self) -> int:
        return sum(src.frames_in for src in self.sources)

    def done(self) -> bool:
        return self.actor_idle() and all(src.quiescent() for src in self.sources)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pace")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with websockets.connect(self.url, open_timeout=10) as ws:
                    self.connected, delay = True, 0.2
                    log.info("pace link up", url=self.url)
                    await self._serve(ws)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the replay restarting or gone: the link comes back
                log.warning("pace link down", error=repr(e), retry_in_s=delay)
            self.connected = False
            await asyncio.sleep(delay)  # backoff before dialling again
            delay = min(5.0, delay * 2)

    async def _serve(self, ws: Any) -> None:
        base = self.frames()  # the server counts this connection's acks from zero
        listener = asyncio.create_task(self._listen(ws), name="pace-listen")
        sent = -1
        try:
            while not listener.done():
                await self._poke.wait()
                self._poke.clear()
                if self.done():
                    n = self.frames() - base
                    if n != sent:
                        await ws.send(f"ack {n}")
                        sent = n
        finally:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener

    async def _listen(self, ws: Any) -> None:
        async for msg in ws:
            verb, _, n = str(msg).partition(" ")
            if verb == "pass":
                self.ended = False
                self.passes = int(n) + 1 if n.isdigit() else self.passes + 1
                if self.on_pass is not None:
                    self.on_pass(self.passes - 1)
            elif verb == "end" and not self.ended:
                self.ended = True
                log.info("replay ended", lines=n)
                await self.on_end(int(n) if n.isdigit() else 0)
        self.poke()  # closed: wake the ack loop so it sees the listener done
