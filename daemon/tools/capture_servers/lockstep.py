"""Loop-paced replay: the recorded lines go out one at a time, in recorded order over every
capture (market and social), each only once the paced client has handled everything before it.

Why one at a time: what the daemon makes of a frame depends on what it handled before (its
context window, its decision clock, the spot book ticker's timestamp, which comes from the last
trade on that exchange), and ccxt keeps only the newest book ticker when two arrive before its
reader asks. With a single line in flight none of that depends on the machine's speed, so two
replays of the same captures take the same decisions on the same inputs.

Protocol, on ``ws://HOST:PORT/pace`` (the Binance replay server's port):

- the client sends ``ack N``: since it connected it has received N data frames over all its
  replay connections and handled each completely (records sent, decisions taken). Replies to
  its own requests are not data frames;
- the server sends ``pass K`` when pass K of the captures begins (K = 0, 1, ... with ``loop``)
  and ``end N`` once its last line has been released and acknowledged (N frames in the pass);
  ``end`` at once to a client that connects after the last pass.

Passes after the first, and the first one when ``start_after_ns`` says the consumers have seen
this recorded time already, are time-shifted copies (``daemon.tools.capture_servers.shift``): each starts
``PASS_GAP_NS`` after the newest time the one before played.

While no client is connected, nothing is released: a daemon restarted by its supervisor
resumes where the replay stood. A line whose stream has no subscriber is played to nobody (as
on a live exchange) and needs no acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from typing import Any, Awaitable, Callable, Iterator

from websockets.asyncio.server import ServerConnection

from daemon.logging import get_logger
from daemon.tools.capture_servers.binance_server import BinanceReplayServer
from daemon.tools.capture_servers.jetstream_server import JetstreamReplayServer
from daemon.tools.capture_servers.shift import shift_binance, shift_jetstream

log = get_logger(__name__)

Release = Callable[[], Awaitable[int]]
PASS_GAP_NS = 60 * 1_000_000_000  # past every horizon, grace and end-of-input watermark of a pass
TRADE_ID_STEP = 10**11  # trade ids of pass K move by K steps: new to every dedupe window


class Lockstep:
    """Releases the lines of ``binance`` (and ``jetstream``) one at a time against acknowledgements.

    Args:
        span_s: replay only the first ``span_s`` seconds of recorded time (None: everything).
        waiting_log_s: how often a release still waiting for its acknowledgement is logged.

    The Jetstream capture was recorded on another day: its lines keep their recorded gaps and
    start with the first market line.
    """

    def __init__(self, binance: BinanceReplayServer, jetstream: JetstreamReplayServer | None = None, *,
                 span_s: float | None = None, loop: bool = False, start_after_ns: int | None = None,
                 waiting_log_s: float = 30.0) -> None:
        self.binance, self.jetstream = binance, jetstream
        self.span_ns = None if span_s is None else round(span_s * 1e9)
        self.loop, self.start_after_ns = loop, start_after_ns
        self.waiting_log_s = waiting_log_s
        self.released = 0  # data frames put on the wire, all clients together
        self.acked = 0
        self.lines = 0  # recorded lines taken in turn (played to nobody included)
        self.passes = 0  # passes begun
        self.high_water_ns: int | None = None  # newest (shifted) recorded time played
        self.finished = asyncio.Event()
        self._client: ServerConnection | None = None
        self._base = 0  # ``released`` when the current client connected: its acks count from there
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    # the client's side ------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        """A paced client's connection: its ``ack N`` messages, until it goes."""
        async with self._changed:
            if self._client is not None:
                log.warning("replay.pace_client_replaced")
                with contextlib.suppress(Exception):
                    await self._client.close(1001, "replaced by a newer paced client")
            self._client, self._base = ws, self.released
            self.acked = self.released  # what an earlier client never handled is not owed by this one
            self._changed.notify_all()
        log.info("replay.pace_client_connected", released=self.released)
        if self.finished.is_set():
            with contextlib.suppress(Exception):
                await ws.send("end 0")
        try:
            async for msg in ws:
                verb, _, n = str(msg).partition(" ")
                if verb != "ack" or not n.isdigit():
                    log.warning("replay.pace_bad_message", message=str(msg)[:80])
                    continue
                async with self._changed:
                    self.acked = max(self.acked, self._base + int(n))
                    self._changed.notify_all()
        except Exception as e:  # a client that goes away ends its connection, not the replay
            log.debug("replay.pace_client_error", error=repr(e))
        finally:
            async with self._changed:
                if self._client is ws:
                    self._client = None
                    self._changed.notify_all()
            log.info("replay.pace_client_gone", released=self.released, acked=self.acked)

    @property
    def connected(self) -> bool:
        return self._client is not None

    # the replay -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="replay-lockstep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def first_ns(self) -> int:
        return min(c.first_ns for c in self.binance.captures)

    def merged(self, shift_ms: int = 0, id_shift: int = 0) -> Iterator[tuple[int, Release]]:
        """(recorded ns, release) for every line, in recorded order over all captures, times
        moved by ``shift_ms`` and trade ids by ``id_shift``."""
        caps = self.binance.captures
        first = self.first_ns()
        shift_ns = shift_ms * 1_000_000

        def market(cap: Any) -> Iterator[tuple[int, Release]]:
            for ts, stream, payload in cap.lines():
                moved = shift_binance(payload, shift_ms, id_shift)
                yield ts + shift_ns, lambda c=cap, s=stream, p=moved: self.binance.release(c, s, p)

        sources = [market(c) for c in caps]
        if self.jetstream is not None:
            js = self.jetstream
            start = first - js.lines[0].pace_us * 1000  # the social capture starts with the market's
            sources.append(((ln.pace_us * 1000 + start + shift_ns,
                             lambda ln=ln: js.release(ln, shift_jetstream(ln.raw, shift_ms * 1000)))
                            for ln in js.lines))
        for ts, release in heapq.merge(*sources, key=lambda item: item[0]):
            if self.span_ns is not None and ts - shift_ns - first > self.span_ns:
                return
            yield ts, release

    def next_shift_ms(self) -> int:
        """The shift of the next pass: none for a first pass on fresh consumers, else past the
        newest time played (this run's, or ``start_after_ns``: an earlier run's)."""
        after = self.high_water_ns if self.high_water_ns is not None else self.start_after_ns
        if after is None:
            return 0
        return max(0, -(-(after + PASS_GAP_NS - self.first_ns()) // 1_000_000))

    async def _run(self) -> None:
        try:
            while True:
                shift_ms, k = self.next_shift_ms(), self.passes
                self.passes += 1
                await self._wait_acked()
                await self._say(f"pass {k}")
                log.info("replay.pass_begins", lap=k, shift_s=shift_ms / 1000)
                start = self.released
                for ts, release in self.merged(shift_ms, k * TRADE_ID_STEP):
                    await self._wait_acked()  # the previous line handled, and a client there
                    self.lines += 1
                    self.high_water_ns = ts if self.high_water_ns is None else max(self.high_water_ns, ts)
                    self.released += await release()
                await self._wait_acked()
                log.info("replay.pass_finished", lap=k, lines=self.lines, released=self.released)
                await self._say(f"end {self.released - start}")
                if not self.loop:
                    break
        finally:
            self.finished.set()

    async def _say(self, msg: str) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.send(msg)

    async def _wait_acked(self) -> None:
        async with self._changed:
            while self._client is None or self.acked < self.released:
                try:
                    await asyncio.wait_for(self._changed.wait(), self.waiting_log_s)
                except TimeoutError:
                    log.warning("replay.pace_waiting", released=self.released, acked=self.acked,
                                client_connected=self._client is not None)

