"""Plumbing shared by the replay servers: pacing, per-connection send queues, tiny HTTP replies."""

from __future__ import annotations

import asyncio
import contextlib
import math
from abc import ABC, abstractmethod
from typing import Any, Awaitable, Callable

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from daemon.logging import get_logger

log = get_logger(__name__)


class Pacer:
    """Maps recorded time to wall time: a message recorded ``dt`` after the first one is due
    ``dt / speed`` after ``start()``. ``speed=math.inf`` sends as fast as the clients read."""

    def __init__(self, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self.started = asyncio.Event()
        self._t0 = 0.0
        self._rec0 = 0
        self._since_yield = 0

    def start(self, first_ns: int) -> None:
        if not self.started.is_set():
            self._t0 = asyncio.get_running_loop().time()
            self._rec0 = first_ns
            self.started.set()

    def due(self, recorded_ns: int) -> float:
        """Event-loop time at which a line recorded at ``recorded_ns`` (epoch ns) is due."""
        if math.isinf(self.speed):
            return self._t0
        return self._t0 + (recorded_ns - self._rec0) / 1e9 / self.speed

    async def wait_due(self, recorded_ns: int) -> None:
        delay = self.due(recorded_ns) - asyncio.get_running_loop().time()
        # sleeping for every message costs more than the gaps at high speed: sleep only when
        # worth it, and otherwise yield now and then so clients and controls get a turn
        if delay > 0.002:
            self._since_yield = 0
            await asyncio.sleep(delay)
        else:
            self._since_yield += 1
            if self._since_yield >= 64:
                self._since_yield = 0
                await asyncio.sleep(0)


class Binary(bytes):
    """A frame to send as a binary websocket frame (everything else goes out as text)."""


class Outbox:
    """One connection's send queue and writer task.

    The queue is bounded: a producer waits while it is full (the replay slows down rather than
    losing or buffering without bound); a client that does not read for ``stall_s`` is
    disconnected so that one stuck client cannot stall the replay for everyone."""

    def __init__(self, ws: ServerConnection, maxsize: int = 10_000, stall_s: float = 10.0) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[bytes | str] = asyncio.Queue(maxsize)
        self.stall_s = stall_s
        self.sent = 0
        self.closed = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                msg = await self.queue.get()
                # bytes are recorded JSON text: send them as a text frame, unchanged
                await self.ws.send(msg, text=not isinstance(msg, Binary))
                self.sent += 1
        except Exception:  # the connection closing ends the writer
            pass
        finally:
            self._discard()

    def _discard(self) -> None:
        # a producer blocked on a full queue must not wait for a writer that is gone
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()

    async def put(self, msg: bytes | str) -> None:
        if self.closed:
            return
        if self.queue.full():
            try:
                await asyncio.wait_for(self.queue.put(msg), self.stall_s)
            except TimeoutError:
                log.warning("replay.client_stalled", remote=str(self.ws.remote_address))
                self.abort()
        else:
            self.queue.put_nowait(msg)

    def abort(self) -> None:
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        self._discard()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def http_reply(status: int, body: bytes, content_type: str = "application/json") -> Response:
    """A complete HTTP/1.1 response for a non-websocket request. ``Connection: close`` because
    the websockets server closes the TCP connection after it; pooling clients must not reuse it."""
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found"}
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Connection", "close")])
    return Response(status, reasons.get(status, "Error"), headers, body)


def is_websocket(request: Any) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


class ReplayServer(ABC):
    """What every capture-replaying server shares: its address, the websocket server's life, and
    ``async with``. A subclass sets ``host``, ``port`` and ``_server`` in ``start`` and stops its
    own players and outboxes in ``stop`` before ``close_server``."""

    host: str
    port: int
    _server: Any = None
    _subs: dict  # subscription key -> the outboxes subscribed to it
    _outboxes: dict  # one per connection
    _changed: asyncio.Condition  # notified when subscriptions change

    async def subscribed(self, keys: list, timeout: float) -> bool:
        """Until every key has a subscriber; False on timeout."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: all(self._subs.get(k) for k in keys)), timeout)
                return True
            except TimeoutError:
                return False

    @property
    def connections(self) -> int:
        return len(self._outboxes)

    @abstractmethod
    async def start(self) -> Any:
        """Listen; returns the server (for ``async with``)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop playing, close every outbox, then ``close_server``."""

    async def serve_commands(self, ws: ServerConnection, outbox: Outbox, mine: set,
                             command: Callable[[str | bytes], Awaitable[None]], key_of: Callable[[Any], Any]) -> None:
        """One connection: its commands until it goes, then its subscriptions (``mine``, mapped
        to ``_subs`` keys by ``key_of``) and its outbox are dropped and waiters are told."""
        try:
            async for raw in ws:
                await command(raw)
        except Exception as e:  # noqa: BLE001 - a broken client must not take the server down
            log.debug("replay.client_error", server=type(self).__name__, error=repr(e))
        finally:
            for item in mine:
                self._subs[key_of(item)].discard(outbox)
            del self._outboxes[ws]
            await outbox.close()
            await self.notify_changed()

    async def notify_changed(self) -> None:
        """Wake ``subscribed`` waiters: the subscriptions changed."""
        async with self._changed:
            self._changed.notify_all()

    async def close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            # a peer that never answers the close handshake must not hang a test's teardown
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"
