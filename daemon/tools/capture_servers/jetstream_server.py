"""A local Bluesky Jetstream server replaying a recorded JSONL capture.

Protocol, as Jetstream's ``/subscribe``:
- ``wantedCollections`` (repeatable; ``app.bsky.feed.*`` prefixes allowed) filters commit
  events by collection; identity and account events go to every subscriber, as on Jetstream.
- ``wantedDids`` (repeatable) filters by repository.
- ``cursor`` (unix µs): first everything already played whose ``time_us >= cursor``, in
  ``time_us`` order, then live. Without it, live only.
Lines are sent byte for byte, as text frames. Pacing follows the running maximum of
``time_us`` (lines are in arrival order, ``time_us`` is not monotonic) divided by ``speed``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve

from daemon.errors import ReplayError
from daemon.logging import get_logger
from daemon.tools.capture_servers.captures import loads
from daemon.tools.capture_servers.serving import Binary, Outbox, Pacer, http_reply, is_websocket

log = get_logger(__name__)
DEFAULT_FILE = "jetstream_v1_2026-07-04.jsonl"


@dataclass(frozen=True)
class Line:
    time_us: int
    pace_us: int  # running max of time_us up to this line
    did: str
    kind: str
    collection: str | None
    raw: bytes


@dataclass
class _Filter:
    collections: tuple[str, ...]
    dids: frozenset[str]

    def wants(self, line: Line) -> bool:
        if self.dids and line.did not in self.dids:
            return False
        if line.kind != "commit" or not self.collections:
            return True
        c = line.collection or ""
        return any(c == w or (w.endswith("*") and c.startswith(w[:-1])) for w in self.collections)


class JetstreamReplayServer:
    """Args: ``data_path`` is the JSONL file, its folder (``social_bluesky``) or the data root;
    ``speed`` divides recorded gaps (the whole capture spans 0.32 s: use < 1 to spread it)."""

    def __init__(self, data_path: str | Path, *, speed: float = 1.0, host: str = "127.0.0.1", port: int = 0) -> None:
        path = Path(data_path)
        if path.is_dir() and (path / "social_bluesky").is_dir():
            path = path / "social_bluesky"
        if path.is_dir():
            path = path / DEFAULT_FILE
        if not path.is_file():
            raise ReplayError(f"no Jetstream capture at {path}")
        self.path = path
        self.host, self.port = host, port
        self.pacer = Pacer(speed)
        self.lines = self._load(path)
        self.position = 0  # lines played so far: the replay cursor
        self.finished = asyncio.Event()
        self._subs: dict[ServerConnection, tuple[Outbox, _Filter]] = {}
        self._changed = asyncio.Condition()
        self._server: Server | None = None
        self._player: asyncio.Task[None] | None = None
        self.requests: list[str] = []  # the path and query of every connection, oldest first

    @staticmethod
    def _load(path: Path) -> list[Line]:
        out, pace = [], 0
        with path.open("rb") as fh:  # 152 lines, 84 kB: small enough to hold
            for raw in fh:
                raw = raw.rstrip(b"\r\n")
                if not raw:
                    continue
                d = loads(raw)
                assert isinstance(d, dict)
                t = int(d["time_us"])
                pace = max(pace, t)
                commit = d.get("commit") or {}
                out.append(Line(t, pace, str(d.get("did", "")), str(d.get("kind", "")),
                                 commit.get("collection"), raw))
        if not out:
            raise ReplayError(f"empty Jetstream capture {path}")
        return out

    async def start(self) -> "JetstreamReplayServer":
        self._server = await serve(self._handle, self.host, self.port, process_request=self._http,
                                   ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port
        log.info("replay.jetstream.listening", url=self.url, lines=len(self.lines), speed=self.pacer.speed)
        return self

    def play(self) -> None:
        if self._player is None:
            self.pacer.start(self.lines[0].pace_us * 1000)
            self._player = asyncio.create_task(self._play(), name="replay-jetstream")

    async def stop(self) -> None:
        if self._player is not None:
            self._player.cancel()
        for outbox, _ in list(self._subs.values()):
            await outbox.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> "JetstreamReplayServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/subscribe"

    # controls for tests --------------------------------------------------------------------
    async def drop_all(self, *, abort: bool = False) -> int:
        conns = list(self._subs)
        for ws in conns:
            if abort:
                self._subs[ws][0].abort()
            else:
                with contextlib.suppress(Exception):
                    await ws.close(1001, "replay server drop")
        return len(conns)

    async def inject(self, frame: bytes | str, *, binary: bool = False) -> int:
        """Send ``frame`` as is to every connection (e.g. a malformed one); as a binary frame
        with ``binary`` (a text frame must be valid UTF-8, or the client's websocket fails)."""
        if binary:
            frame = Binary(frame.encode() if isinstance(frame, str) else frame)
        subs = [ob for ob, _ in self._subs.values()]
        for ob in subs:
            await ob.put(frame)
        return len(subs)

    async def wait_connected(self, n: int = 1, timeout: float = 10.0) -> bool:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self._subs) >= n), timeout)
                return True
            except TimeoutError:
                return False

    @property
    def connections(self) -> int:
        return len(self._subs)

    # internals -------------------------------------------------------------------------------
    async def release(self, line: Line, raw: bytes | None = None) -> int:
        """Play one line now (as ``raw`` when given: a time-shifted copy) to every connection whose
        filter wants it; how many is returned."""
        self.position += 1
        subs = [outbox for outbox, flt in list(self._subs.values()) if flt.wants(line)]
        for outbox in subs:
            await outbox.put(line.raw if raw is None else raw)
        return len(subs)

    async def _play(self) -> None:
        for line in self.lines:
            await self.pacer.wait_due(line.pace_us * 1000)
            await self.release(line)
        self.finished.set()
        log.info("replay.jetstream.finished", lines=self.position)

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "/"
        self.requests.append(path)
        query = parse_qs(urlsplit(path).query)
        flt = _Filter(tuple(query.get("wantedCollections", [])), frozenset(query.get("wantedDids", [])))
        outbox = Outbox(ws)
        cursor = query.get("cursor", [None])[-1]
        # catch-up and registration happen without an await in between, so no live line can
        # slip between the two or arrive twice
        backlog: list[Line] = []
        if cursor is not None:
            try:
                c = int(cursor)
            except ValueError:
                await ws.close(1008, "cursor must be unix microseconds")
                await outbox.close()
                return
            backlog = sorted((ln for ln in self.lines[: self.position] if ln.time_us >= c and flt.wants(ln)),
                             key=lambda ln: ln.time_us)
        for ln in backlog:  # at most the whole capture, far below the outbox bound
            outbox.queue.put_nowait(ln.raw)
        self._subs[ws] = (outbox, flt)
        async with self._changed:
            self._changed.notify_all()
        try:
            async for _ in ws:  # Jetstream's options-update messages are not replayed; ignore
                pass
        except Exception as e:
            log.debug("replay.jetstream.client_error", error=repr(e))
        finally:
            del self._subs[ws]
            await outbox.close()
            async with self._changed:
                self._changed.notify_all()

    def _http(self, connection: ServerConnection, request: object) -> object:
        if is_websocket(request):
            return None
        return http_reply(404, b'{"error":"websocket only: /subscribe"}')
