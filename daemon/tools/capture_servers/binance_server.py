"""A local Binance websocket (and minimal REST) server that replays the recorded captures.

What a client sees, per connection (ccxt.pro dials one per watch type):
- ``ws://HOST:PORT/<market>/...`` where market is ``spot``, ``usdm`` or ``coinm``; the rest of
  the path is ignored (ccxt appends ``/stream/ws/N``, ``/public/ws/N``, ...).
- ``{"method":"SUBSCRIBE","params":[...],"id":N}`` is answered ``{"result":null,"id":N}`` and
  from then on the connection gets exactly the recorded lines of those streams, byte for byte
  (the ``{"stream":..,"data":..}`` envelope, without the leading receive timestamp).
  ``UNSUBSCRIBE`` and ``LIST_SUBSCRIPTIONS`` work as on Binance. Any depth rate
  (``@depth``, ``@depth@100ms``, ``@depth@0ms``) gets the recorded depth stream.
- Plain HTTP GET on the same port: ``<base>/exchangeInfo`` (approximate, hand-written: the
  captures have none) and ``<base>/depth?symbol=..`` (the recorded snapshot, or after the replay
  started one derived from it and the deltas already sent) with base ``/api/v3``, ``/fapi/v1``
  or ``/dapi/v1``.

Timing: one replay clock for all symbols and markets, started by ``play()``. Each symbol's
files are streamed in recorded order; a line is sent ``(t - t_first) / speed`` after ``play()``,
with ``t`` the receive stamp in ns (the 2023-04 set's µs stamps are converted). The server plays
one capture set: the data root means ``exchange_binance/`` (2024-08); another set is played by
naming its folder; files of two sets in one folder are refused at start (one clock over both
would wait out the months between them).
The position in the recording (the cursor) is the server's, not the connection's: a client that
reconnects resumes at the current position and never gets a line twice; lines played while
nobody subscribed are gone, as on a live exchange. Subscribe before ``play()`` to receive the
beginning (depth needs that: the first deltas must overlap the snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve

from daemon.errors import ReplayError
from daemon.logging import get_logger
from daemon.tools.capture_servers.serving import Binary, Outbox, Pacer, ReplayServer, http_reply, is_websocket
from daemon.tools.capture_servers.captures import (MARKETS, Book, Capture, canonical_stream, check_one_set, dumps, exchange_info,
                                    find_captures, loads)

log = get_logger(__name__)


class BinanceReplayServer(ReplayServer):
    """Replays ``exchange_binance/`` captures over websocket for ``symbols`` per market.

    Args:
        data_path: a capture set folder (``exchange_binance``, ``exchange_binance_2023-04``) or the
            data root ``../shared/data``, which means ``exchange_binance``.
        symbols: market -> exchange ids, e.g. ``{"spot": ["BTCUSDT"], "usdm": ["BTCUSDT"]}``.
        speed: recorded gaps are divided by this; ``math.inf`` sends as fast as clients read.
        host, port: where to listen; port 0 picks a free one (see ``port`` after ``start()``).
    """

    def __init__(self, data_path: str | Path, symbols: Mapping[str, Iterable[str]], *, speed: float = 20.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        root = Path(data_path)
        if (root / "exchange_binance").is_dir():
            root = root / "exchange_binance"
        self.root = root
        self.symbols = {m: [s.upper() for s in syms] for m, syms in symbols.items()}
        self.host, self.port = host, port
        self.pacer = Pacer(speed)
        self.captures: list[Capture] = []
        self.books: dict[tuple[str, str], Book] = {}
        # (market, canonical stream) -> lines sent so far; the replay position of that stream
        self.cursors: dict[tuple[str, str], int] = defaultdict(int)
        self.finished = asyncio.Event()
        self._subs: dict[tuple[str, str], set[Outbox]] = defaultdict(set)
        self._outboxes: dict[ServerConnection, tuple[str, Outbox, set[str]]] = {}
        self._changed = asyncio.Condition()
        self._server: Server | None = None
        self._players: list[asyncio.Task[None]] = []
        self.pace_handler: Callable[[ServerConnection], Awaitable[None]] | None = None

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> "BinanceReplayServer":
        """Find the captures (``ReplayError`` if one is missing) and start listening. Nothing
        is sent before ``play()``."""
        for market, syms in self.symbols.items():
            self.captures += find_captures(self.root, market, syms)
        check_one_set(self.captures)
        self._recorded = {m: {c.symbol.lower() for c in self.captures if c.market == m} for m in self.symbols}
        for cap in self.captures:
            if cap.snapshot is not None:
                self.books[(cap.market, cap.symbol)] = Book(cap.snapshot)
        self._server = await serve(self._handle, self.host, self.port, process_request=self._http,
                                   max_size=2**22, ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port
        log.info("replay.binance.listening", url=self.url, markets=self.symbols, speed=self.pacer.speed)
        return self

    def play(self) -> None:
        """Start the replay clock and the players (idempotent)."""
        if self._players:
            return
        self.pacer.start(min(c.first_ns for c in self.captures))
        self._players = [asyncio.create_task(self._play(c), name=f"replay-{c.market}-{c.symbol}")
                         for c in self.captures]
        done = asyncio.gather(*self._players, return_exceptions=True)
        done.add_done_callback(lambda _: self.finished.set())

    async def stop(self) -> None:
        for t in self._players:
            t.cancel()
        for _, outbox, _ in list(self._outboxes.values()):
            await outbox.close()
        await self.close_server()

    # URLs for clients ------------------------------------------------------------------------
    @property
    def pace_url(self) -> str:
        return f"{self.url}/pace"

    def ws_url(self, market: str) -> str:
        """The base to put in ccxt's ``urls['api']['ws'][...]``. Spot must contain ``/stream``
        (ccxt tells spot frames from futures ones by that substring) and futures must not."""
        return {"spot": f"{self.url}/spot/stream/ws", "usdm": f"{self.url}/usdm/ws",
                "coinm": f"{self.url}/coinm/ws"}[market]

    # controls for tests ------------------------------------------------------------------
    async def drop_all(self, *, abort: bool = False) -> int:
        """Close every client connection now (``abort``: without a closing handshake, as a
        network failure would). Returns how many were dropped. The replay goes on."""
        conns = list(self._outboxes)
        for ws in conns:
            if abort:
                self._outboxes[ws][1].abort()
            else:
                with contextlib.suppress(Exception):
                    await ws.close(1001, "replay server drop")
        return len(conns)

    async def inject(self, market: str, stream: str, frame: bytes | str, *, binary: bool = False) -> int:
        """Send ``frame`` as is to every subscriber of ``stream`` (e.g. a malformed frame); as a
        binary frame with ``binary`` (a text frame must be valid UTF-8)."""
        if binary:
            frame = Binary(frame.encode() if isinstance(frame, str) else frame)
        subs = list(self._subs.get((market, canonical_stream(stream)), ()))
        for ob in subs:
            await ob.put(frame)
        return len(subs)

    def subscribers(self, market: str, stream: str) -> int:
        return len(self._subs.get((market, canonical_stream(stream)), ()))

    async def wait_subscribed(self, wanted: Iterable[tuple[str, str]], timeout: float) -> bool:
        """Wait until every (market, stream) has a subscriber; False on timeout."""
        return await self.subscribed([(m, canonical_stream(s)) for m, s in wanted], timeout)

    # internals -------------------------------------------------------------------------------
    async def release(self, cap: Capture, stream: str, payload: bytes) -> int:
        """Play one recorded line now: to every subscriber of its stream (how many is returned)."""
        key = (cap.market, stream)
        self.cursors[key] += 1
        book = self.books.get((cap.market, cap.symbol))
        if book is not None and stream.endswith("@depth"):
            book.apply(payload)
        subs = list(self._subs.get(key, ()))
        for ob in subs:
            await ob.put(payload)
        return len(subs)

    async def _play(self, cap: Capture) -> None:
        try:
            for ts, stream, payload in cap.lines():
                await self.pacer.wait_due(ts)
                await self.release(cap, stream, payload)
        except ReplayError as e:
            # the players' results are gathered only to set ``finished``: say it here, loudly
            log.error("replay.binance.refused", market=cap.market, symbol=cap.symbol, error=str(e))
            raise
        log.info("replay.binance.finished", market=cap.market, symbol=cap.symbol)

    async def _handle(self, ws: ServerConnection) -> None:
        parts = [p for p in urlsplit(ws.request.path if ws.request else "/").path.split("/") if p]
        market = parts[0] if parts else ""
        if market == "pace" and self.pace_handler is not None:
            await self.pace_handler(ws)  # the paced client's acknowledgements (``daemon.tools.capture_servers.lockstep``)
            return
        if market not in self.symbols:
            await ws.close(1008, f"unknown market {market!r}; use /{'|'.join(self.symbols)}/...")
            return
        outbox = Outbox(ws)
        mine: set[str] = set()
        self._outboxes[ws] = (market, outbox, mine)
        await self.serve_commands(ws, outbox, mine, lambda raw: self._command(market, outbox, mine, raw),
                                  lambda stream: (market, stream))

    async def _command(self, market: str, outbox: Outbox, mine: set[str], raw: str | bytes) -> None:
        try:
            msg = loads(raw)
            method, params, req_id = msg.get("method"), msg.get("params") or [], msg.get("id")  # type: ignore[union-attr]
        except Exception:
            await outbox.put(dumps({"error": {"code": 3, "msg": "Invalid JSON"}}))
            return
        if method == "SUBSCRIBE":
            # the reply is queued before any data of the new streams (ccxt waits for it)
            await outbox.put(dumps({"result": None, "id": req_id}))
            for s in params:
                key = canonical_stream(s)
                mine.add(key)
                self._subs[(market, key)].add(outbox)
                if key.partition("@")[0] not in self._recorded[market]:
                    log.warning("replay.binance.not_recorded", market=market, stream=s)
            await self.notify_changed()
        elif method == "UNSUBSCRIBE":
            for s in params:
                key = canonical_stream(s)
                mine.discard(key)
                self._subs[(market, key)].discard(outbox)
            await outbox.put(dumps({"result": None, "id": req_id}))
        elif method == "LIST_SUBSCRIPTIONS":
            await outbox.put(dumps({"result": sorted(mine), "id": req_id}))
        else:
            await outbox.put(dumps({"error": {"code": 2, "msg": f"Invalid request: {method}"}, "id": req_id}))

    def _http(self, connection: ServerConnection, request: Any) -> Any:
        if is_websocket(request):
            return None
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for market, (_, _, base) in MARKETS.items():
            if market in self.symbols and url.path.startswith(base + "/"):
                endpoint = url.path[len(base) + 1:]
                if endpoint == "exchangeInfo":
                    return http_reply(200, exchange_info(market, self.symbols[market]))
                if endpoint == "depth":
                    book = self.books.get((market, query.get("symbol", "").upper()))
                    if book is None:
                        return http_reply(400, dumps({"code": -1121, "msg": "Invalid symbol."}))
                    limit = int(query.get("limit", "1000"))
                    return http_reply(200, book.snapshot(limit))
                if endpoint in ("ping", "time"):
                    return http_reply(200, b"{}" if endpoint == "ping" else dumps({"serverTime": 0}))
        return http_reply(404, dumps({"code": -1, "msg": f"not replayed: {url.path}"}))


def default_symbols() -> dict[str, list[str]]:
    return {"spot": ["BTCUSDT", "ETHUSDT"], "usdm": ["BTCUSDT", "ETHUSDT"]}


__all__ = ["BinanceReplayServer", "default_symbols"]
