"""A local OKX v5 public websocket (and minimal REST) server that replays a recorded session.

The recording is ``exchange_okx/OKX.ws.1.0`` under the shared data root: a raw-data capture
taken with cryptofeed against OKX's live v5 endpoint on 2022-05-13 (about 11 s; books, trades
and tickers for BTC-USDT, BTC-USD-220527 and UNI-USD-SWAP). Format, one entry a line:

- ``<ws url> <-> <unix ts>``: the connection was opened (skipped);
- ``<ws url> <- <unix ts>: <json>``: a request the recorder sent (skipped: our clients send their own);
- ``<unix ts, float seconds>: <raw JSON>``: a frame OKX sent, exactly as received. The recorded
  ``{"event":"subscribe",..}`` replies are skipped too (the server answers each client's own
  subscribe); every other frame is data, keyed by its ``arg`` (channel, instId).

What a client sees (ccxt.pro's ``okx`` with ``urls['api']['ws']`` = ``ws_url``):

- ``ws://HOST:PORT/ws/v5/public`` (any path under ``/ws/v5``);
- ``{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}, ...]}`` is answered with
  ``{"event":"subscribe","arg":{...},"connId":..}`` per arg, and from then on the connection gets
  the recorded frames of those (channel, instId) pairs byte for byte; ``unsubscribe`` likewise;
  OKX's text ``ping`` is answered ``pong``; an unknown op or a non-JSON request gets OKX's
  ``{"event":"error","code":"60012",..}``. A channel the recording lacks (``bbo-tbt``) is accepted
  and stays silent, with a warning: ccxt's ``watch_bids_asks`` must use ``tickers`` here
  (``REPLAY_OPTIONS``, for ``MarketSource(exchange_options={"okx": REPLAY_OPTIONS})``).
- Plain HTTP GET on the same port: ``/api/v5/public/instruments?instType=..`` and
  ``/api/v5/public/time``. The instruments are **hand-written approximations** (the recording
  has no REST responses): the fields ccxt's ``okx.parse_market`` reads, with BTC-USDT's tick and
  lot sizes as OKX listed them; good for market parsing, not for order sizing.

Timing: its own replay clock, started by ``play()``, independent of any other server's (the
Binance captures are from 2024, this one from 2022). A frame is sent ``(t - t_first) / speed``
after ``play()``, ``t`` the receive stamp. As with the Binance server, the cursor is the
server's: frames played while nobody subscribed are gone, and the ``books`` snapshot is sent
once, so subscribe before ``play()`` (OKX itself sends a fresh snapshot on every subscribe;
this server does not derive one).

Attribution (the recording's licence, ``../shared/data/licenses/cryptofeed-LICENSE.txt``):
This product includes software developed by Bryant Moscon (http://www.bryantmoscon.com/).
The recording is Copyright (C) 2017-2025 Bryant Moscon; it stays in ``../shared`` with its notice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve

from daemon.errors import ReplayError
from daemon.logging import get_logger
from daemon.tools.capture_servers.captures import dumps, loads
from daemon.tools.capture_servers.serving import Binary, Outbox, Pacer, ReplayServer, http_reply, is_websocket
from schemas.settings import ExchangeSettings

log = get_logger(__name__)

RECORDING = "OKX.ws.1.0"
WS_PREFIX = "/ws/v5"
# ccxt options a replayed okx needs: only the spot instruments are served, and best bid/ask
# comes from the recorded ``tickers`` channel (ccxt's default ``bbo-tbt`` was not recorded)
REPLAY_OPTIONS: dict[str, Any] = {"fetchMarkets": {"types": ["spot"]}, "watchBidsAsks": {"channel": "tickers"}}

Key = tuple[str, str]  # (channel, instId)


@dataclass(frozen=True)
class OkxFrame:
    ts_ns: int
    key: Key
    payload: bytes  # the frame as OKX sent it


def read_recording(path: Path) -> list[OkxFrame]:
    """The data frames of a cryptofeed raw recording, in recorded order (see the module doc)."""
    frames = []
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip(b"\r\n")
            head, sep, payload = line.partition(b": ")
            if not sep or b" " in head:  # the connect line, or a request the recorder sent
                continue
            try:
                ts_ns = int(Decimal(head.decode()) * 1_000_000_000)
                msg = loads(payload)
            except (InvalidOperation, ValueError) as e:
                raise ReplayError(f"{path}:{n}: not '<ts>: <json>': {e}") from e
            if not isinstance(msg, dict) or "event" in msg:
                continue  # the recorder's own subscribe replies
            arg = msg.get("arg") or {}
            frames.append(OkxFrame(ts_ns, (str(arg.get("channel")), str(arg.get("instId"))), payload))
    return frames


def unified_symbol(inst_id: str) -> str:
    """``BTC-USDT`` -> ``BTC/USDT`` (the spot instruments this server describes)."""
    base, quote = inst_id.split("-")[:2]
    return f"{base}/{quote}"


def spot_instrument(inst_id: str) -> dict[str, str]:
    """A hand-written OKX v5 SPOT instrument record (approximate; see the module doc)."""
    base, quote = inst_id.split("-")[:2]
    return {"instType": "SPOT", "instId": inst_id, "uly": "", "instFamily": "", "category": "1", "baseCcy": base,
            "quoteCcy": quote, "settleCcy": "", "ctVal": "", "ctMult": "", "ctValCcy": "", "optType": "",
            "stk": "", "listTime": "1548133413000", "expTime": "", "lever": "10", "tickSz": "0.1",
            "lotSz": "0.00000001", "minSz": "0.00001", "ctType": "", "alias": "", "state": "live",
            "maxLmtSz": "9999999999", "maxMktSz": "1000000", "maxTwapSz": "9999999999",
            "maxIcebergSz": "9999999999", "maxTriggerSz": "9999999999", "maxStopSz": "1000000"}


class OkxReplayServer(ReplayServer):
    """Replays the OKX recording over websocket for ``inst_ids`` (e.g. ``["BTC-USDT"]``).

    Args:
        data_path: the shared data root, or the ``exchange_okx`` folder itself.
        inst_ids: OKX instrument ids to replay (their frames only; all spot).
        speed: recorded gaps are divided by this; ``math.inf`` sends as fast as clients read.
        host, port: where to listen; port 0 picks a free one (``port`` after ``start()``).
    """

    def __init__(self, data_path: str | Path, inst_ids: Iterable[str] = ("BTC-USDT",), *, speed: float = 20.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        root = Path(data_path)
        self.path = root / "exchange_okx" / RECORDING if (root / "exchange_okx").is_dir() else root / RECORDING
        self.inst_ids = list(dict.fromkeys(inst_ids))
        self.host, self.port = host, port
        self.pacer = Pacer(speed)
        self.frames: list[OkxFrame] = []
        self.sent: dict[Key, int] = defaultdict(int)  # frames played per (channel, instId)
        self.finished = asyncio.Event()
        self._subs: dict[Key, set[Outbox]] = defaultdict(set)
        self._outboxes: dict[ServerConnection, Outbox] = {}
        self._changed = asyncio.Condition()
        self._conn_ids = itertools.count(1)
        self._server: Server | None = None
        self._player: asyncio.Task[None] | None = None

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> "OkxReplayServer":
        """Read the recording (``ReplayError`` if it is missing or lacks an instrument) and listen."""
        if not self.path.is_file():
            raise ReplayError(f"OKX recording not found: {self.path}")
        wanted = set(self.inst_ids)
        self.frames = [f for f in read_recording(self.path) if f.key[1] in wanted]
        missing = wanted - {f.key[1] for f in self.frames}
        if missing:
            raise ReplayError(f"{self.path} has no frames for {sorted(missing)}")
        self._server = await serve(self._handle, self.host, self.port, process_request=self._http,
                                   max_size=2**22, ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port
        log.info("replay.okx.listening", url=self.url, inst_ids=self.inst_ids, frames=len(self.frames),
                 speed=self.pacer.speed)
        return self

    def play(self) -> None:
        """Start this server's replay clock (idempotent)."""
        if self._player is None:
            self.pacer.start(self.frames[0].ts_ns)
            self._player = asyncio.create_task(self._play(), name="replay-okx")
            self._player.add_done_callback(lambda _: self.finished.set())

    async def stop(self) -> None:
        if self._player is not None:
            self._player.cancel()
        for outbox in list(self._outboxes.values()):
            await outbox.close()
        await self.close_server()

    # URLs and settings for clients -----------------------------------------------------------
    @property
    def ws_url(self) -> str:
        """ccxt's ``urls['api']['ws']``: ccxt appends ``/public``."""
        return f"{self.url}{WS_PREFIX}"

    def exchange_settings(self) -> ExchangeSettings:
        """The ``okx`` source entry pointing ccxt at this server (with ``REPLAY_OPTIONS`` as its
        ccxt options: ``ExchangeSettings`` carries none)."""
        return ExchangeSettings(name="okx", symbols=[unified_symbol(i) for i in self.inst_ids], ws_url=self.ws_url,
                                rest_url=self.rest_url)

    # controls for tests ------------------------------------------------------------------
    async def inject(self, channel: str, inst_id: str, frame: bytes | str, *, binary: bool = False) -> int:
        """Send ``frame`` as is to every subscriber of (channel, instId); how many got it."""
        if binary:
            frame = Binary(frame.encode() if isinstance(frame, str) else frame)
        subs = list(self._subs.get((channel, inst_id), ()))
        for ob in subs:
            await ob.put(frame)
        return len(subs)

    async def wait_subscribed(self, wanted: Iterable[Key], timeout: float) -> bool:
        """Until every (channel, instId) has a subscriber; False on timeout."""
        return await self.subscribed(list(wanted), timeout)

    # internals -------------------------------------------------------------------------------
    async def _play(self) -> None:
        for f in self.frames:
            await self.pacer.wait_due(f.ts_ns)
            self.sent[f.key] += 1
            for ob in list(self._subs.get(f.key, ())):
                await ob.put(f.payload)
        log.info("replay.okx.finished", frames=len(self.frames))

    async def _handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path if ws.request else "/").path
        if not path.startswith(WS_PREFIX + "/"):
            await ws.close(1008, f"unknown path {path!r}; use {WS_PREFIX}/public")
            return
        outbox = Outbox(ws)
        conn_id = f"replay{next(self._conn_ids)}"
        mine: set[Key] = set()
        self._outboxes[ws] = outbox
        await self.serve_commands(ws, outbox, mine, lambda raw: self._command(outbox, conn_id, mine, raw),
                                  lambda key: key)

    async def _command(self, outbox: Outbox, conn_id: str, mine: set[Key], raw: str | bytes) -> None:
        if raw in ("ping", b"ping"):
            await outbox.put("pong")
            return
        try:
            msg = loads(raw)
            op, args = msg.get("op"), msg.get("args") or []  # type: ignore[union-attr]
            keys = [(str(a["channel"]), str(a.get("instId"))) for a in args]
        except Exception:
            await outbox.put(dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {raw!r}"[:200],
                                    "connId": conn_id}))
            return
        if op not in ("subscribe", "unsubscribe"):
            await outbox.put(dumps({"event": "error", "code": "60012", "msg": f"Illegal request: {raw!r}"[:200],
                                    "connId": conn_id}))
            return
        for arg, key in zip(args, keys):
            # the reply is queued before any data of the new channel, as OKX does
            await outbox.put(dumps({"event": op, "arg": arg, "connId": conn_id}))
            if op == "subscribe":
                mine.add(key)
                self._subs[key].add(outbox)
                if key[1] not in self.inst_ids or not any(f.key == key for f in self.frames):
                    log.warning("replay.okx.not_recorded", channel=key[0], inst_id=key[1])
            else:
                mine.discard(key)
                self._subs[key].discard(outbox)
        await self.notify_changed()

    def _http(self, connection: ServerConnection, request: Any) -> Any:
        if is_websocket(request):
            return None
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/api/v5/public/instruments":
            data = [spot_instrument(i) for i in self.inst_ids] if query.get("instType") == "SPOT" else []
            return http_reply(200, dumps({"code": "0", "msg": "", "data": data}))
        if url.path == "/api/v5/public/time":
            ts = self.frames[0].ts_ns // 1_000_000 if self.frames else 0
            return http_reply(200, dumps({"code": "0", "msg": "", "data": [{"ts": str(ts)}]}))
        return http_reply(404, dumps({"code": "50000", "msg": f"not replayed: {url.path}", "data": []}))


__all__ = ["OkxFrame", "OkxReplayServer", "REPLAY_OPTIONS", "read_recording", "spot_instrument", "unified_symbol"]
