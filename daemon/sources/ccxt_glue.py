"""Building ccxt.pro exchanges from ``ExchangeSettings`` and guarding their frame parsing.

Why a guard: ccxt parses each websocket frame inside a done-callback of its receive task. An
exception there (a frame that is not JSON, a payload its parser does not expect) escapes into
the event loop's exception handler, the receive loop is never rescheduled, and the stream goes
silent without any error reaching ``watch_*``. The guard replaces the client's frame entry
point with one that catches those, reports the raw frame, and keeps the loop going.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable
from urllib.parse import urlsplit

import ccxt.pro as ccxtpro
from ccxt.async_support.base.ws.functions import is_json_encoded_object

from daemon.errors import ConfigError

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

# ccxt's ws URL key per Binance market type
_BINANCE_WS_KEYS = {"spot": ("spot", "margin"), "linear": ("linear",), "inverse": ("inverse",)}
_BINANCE_DEFAULT_TYPE = {"binance": "spot", "binanceus": "spot", "binanceusdm": "linear", "binancecoinm": "inverse"}

BadFrame = Callable[[Any, str, str], None]  # (raw frame, reason, error type)


def binance_market_type(exchange_id: str, symbol: str) -> str:
    """spot / linear / inverse, from the unified symbol (``BTC/USDT``, ``BTC/USDT:USDT``,
    ``BTC/USD:BTC``)."""
    if ":" not in symbol:
        return "spot" if exchange_id in ("binance", "binanceus") else _BINANCE_DEFAULT_TYPE.get(exchange_id, "spot")
    quote = symbol.split("/")[1].split(":")[0]
    settle = symbol.split(":")[1].split("-")[0]
    return "linear" if settle == quote else "inverse"


def make_exchange(name: str, symbols: list[str], *, ws_url: str | None = None, rest_url: str | None = None,
                  trades_limit: int = 10_000, options: dict[str, Any] | None = None) -> Any:
    """A ccxt.pro exchange for ``symbols`` with the URL overrides applied.

    ``ws_url`` replaces the websocket base of the market type the symbols are in (Binance:
    ``spot``/``linear``/``inverse``; others: every public ws URL). ``rest_url`` replaces the
    scheme and host of every REST base, keeping Binance's paths (``/api/v3``, ``/fapi/v1``).
    Raises ``ConfigError`` for an unknown exchange or one ``ws_url`` for several market types.
    """
    cls = getattr(ccxtpro, name, None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"unknown ccxt.pro exchange {name!r}")
    if not symbols:
        raise ConfigError(f"exchange {name}: no symbols configured")
    opts: dict[str, Any] = {"tradesLimit": trades_limit}
    binance = name.startswith("binance")
    types = sorted({binance_market_type(name, s) for s in symbols}) if binance else []
    if name in ("binance", "binanceus"):
        # only the REST market lists the symbols need (the others are extra calls, and offline
        # the replay serves only what it has)
        opts["fetchMarkets"] = {"types": types}
    opts.update(options or {})
    ex = cls({"enableRateLimit": True, "options": opts})
    if ws_url:
        ws = ex.urls["api"]["ws"]
        if binance:
            if len(types) != 1:
                raise ConfigError(f"exchange {name}: one ws_url cannot serve {types}; use one entry per "
                                  "market type (binance for spot, binanceusdm, binancecoinm)")
            for key in _BINANCE_WS_KEYS[types[0]]:
                ws[key] = ws_url
        elif isinstance(ws, str):
            ex.urls["api"]["ws"] = ws_url
        else:
            for key, value in list(ws.items()):
                if isinstance(value, str) and "private" not in key:
                    ws[key] = ws_url
    if rest_url:
        new = urlsplit(rest_url)
        for key, value in list(ex.urls["api"].items()):
            if isinstance(value, str) and value.startswith("http"):
                old = urlsplit(value)
                ex.urls["api"][key] = value.replace(f"{old.scheme}://{old.netloc}", f"{new.scheme}://{new.netloc}", 1)
    return ex


# Fields each Binance stream event must carry for ccxt to parse it into something usable.
_BINANCE_REQUIRED = {
    "trade": ("s", "t", "p", "q", "T"),
    "aggTrade": ("s", "a", "p", "q", "T"),
    "depthUpdate": ("s", "U", "u", "b", "a"),
    "bookTicker": ("s", "u", "b", "B", "a", "A"),
}


def binance_frame_problem(msg: Any) -> str | None:
    """Why a decoded Binance frame cannot be used, or None. Replies (``id``/``result``/
    ``error``) and event types not listed above pass through to ccxt unchanged."""
    if isinstance(msg, list):
        return None
    if not isinstance(msg, dict):
        return "not a JSON object"
    data = msg.get("data", msg) if "stream" in msg else msg
    if not isinstance(data, dict):
        return "'data' is not a JSON object"
    if "id" in data or "result" in data or "error" in data or "lastUpdateId" in data:
        return None
    event = data.get("e")
    if event is None and "b" in data and "a" in data:
        event = "bookTicker"  # the spot bookTicker has no event type
    if event is None:
        return "unrecognised frame: no event type"
    missing = [k for k in _BINANCE_REQUIRED.get(event, ()) if data.get(k) is None]
    if missing:
        return f"{event} frame without {','.join(missing)}"
    return None


# Fields each OKX v5 data item must carry, per channel, for ccxt to parse it into something usable.
_OKX_REQUIRED = {
    "trades": ("instId", "tradeId", "px", "sz", "side", "ts"),
    "tickers": ("instId", "bidPx", "bidSz", "askPx", "askSz", "ts"),
    "books": ("asks", "bids", "ts"),
    "books5": ("asks", "bids", "ts"),
    "bbo-tbt": ("asks", "bids", "ts"),
}


def okx_frame_problem(msg: Any) -> str | None:
    """Why a decoded OKX v5 frame cannot be used, or None. ``pong``, events (subscribe replies,
    errors: ccxt's own protocol handling) and channels not listed above pass through unchanged."""
    if isinstance(msg, str):
        return None if msg == "pong" else "unrecognised text frame"
    if not isinstance(msg, dict):
        return "not a JSON object"
    if "event" in msg:
        return None
    arg = msg.get("arg")
    if not isinstance(arg, dict) or not isinstance(arg.get("channel"), str):
        return "unrecognised frame: no 'arg' with a channel"
    channel = arg["channel"]
    if channel not in _OKX_REQUIRED:
        return None
    if not isinstance(arg.get("instId"), str):
        return f"{channel} frame without arg.instId"
    data = msg.get("data")
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        return f"{channel} frame: 'data' is not a list of objects"
    if channel.startswith("books") and msg.get("action") not in ("snapshot", "update", None):
        return f"{channel} frame with action {msg.get('action')!r}"
    for item in data:
        missing = [k for k in _OKX_REQUIRED[channel] if item.get(k) is None]
        if missing:
            return f"{channel} item without {','.join(missing)}"
        if "asks" in _OKX_REQUIRED[channel] and not (isinstance(item["asks"], list) and isinstance(item["bids"], list)):
            return f"{channel} item: asks/bids are not lists"
    return None


# the frame check per ccxt exchange id (prefix); exchanges not listed get none
FRAME_CHECKS: dict[str, Callable[[Any], str | None]] = {"binance": binance_frame_problem, "okx": okx_frame_problem}


def frame_check(exchange_id: str) -> Callable[[Any], str | None] | None:
    return next((check for prefix, check in FRAME_CHECKS.items() if exchange_id.startswith(prefix)), None)


def is_reply(msg: Any) -> bool:
    """A reply to one of our own requests (subscribe, list, OKX's ``ping``), not market data."""
    if msg == "pong":
        return True
    if not isinstance(msg, dict) or "stream" in msg:
        return False
    # Binance: {"result":..,"id":..}; OKX: {"event":"subscribe"|"error",..} (its data has "arg"+"data")
    return "result" in msg or "id" in msg or ("event" in msg and "data" not in msg)


def guard_client(client: Any, on_bad: BadFrame, validate: Callable[[Any], str | None] | None,
                 on_data: Callable[[], None] | None = None) -> None:
    """Replace ``client.handle_text_or_binary_message`` (ccxt's per-frame entry point) with a
    version that never raises: undecodable, invalid or parser-crashing frames go to ``on_bad``.
    ``on_data`` is called for every frame that is not a reply, before ccxt sees it."""
    if getattr(client, "_eigenloop_guarded", False):
        return

    def guarded(data: Any) -> None:
        raw = data
        try:
            if client.decompressBinary and isinstance(data, bytes):
                data = data.decode()
            decoded = _loads(data) if is_json_encoded_object(data) else data
        except Exception as e:
            if on_data is not None:
                on_data()
            on_bad(raw, f"undecodable frame: {e}", type(e).__name__)
            return
        if on_data is not None and not is_reply(decoded):
            on_data()
        problem = validate(decoded) if validate is not None else None
        if problem is not None:
            on_bad(raw, problem, "MalformedInput")
            return
        try:
            client.on_message_callback(client, decoded)
        except Exception as e:  # ccxt's parser failed on this frame; the next one may be fine
            on_bad(raw, f"exchange parser failed: {e!r}"[:500], type(e).__name__)

    client.handle_text_or_binary_message = guarded
    client._eigenloop_guarded = True


def install_guard(ex: Any, on_bad: BadFrame, on_data: Callable[[], None] | None = None) -> None:
    """Guard every websocket client ``ex`` creates from now on."""
    validate = frame_check(ex.id)
    original = ex.client

    def client(url: str) -> Any:
        c = original(url)
        guard_client(c, on_bad, validate, on_data)
        return c

    ex.client = client  # instance attribute: ccxt's own calls to self.client() find it first


# The stream whose task is calling into ccxt now (each supervised stream runs in its own task,
# and a task's context is its own).
CURRENT_STREAM: contextvars.ContextVar[Any] = contextvars.ContextVar("eigenloop_stream", default=None)


def install_drop_tracking(ex: Any, drops: dict[str, int]) -> None:
    """Count connection losses per URL in ``drops`` and record, on the calling stream's state
    (``CURRENT_STREAM``, attribute ``urls``), which URLs its ``watch_*`` calls use.

    Why: ccxt rejects only the futures pending when a socket dies. A stream that was busy
    between two ``watch_*`` calls (awaiting its sink) never sees an error; its next call simply
    dials again. Comparing these counts before and after a call reveals such silent drops."""

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        def hook(client: Any, *args: Any) -> Any:
            # on_error is usually followed by on_close for the same connection: count it once;
            # a dial that never connected is not a drop of a working stream
            if not getattr(client, "_eigenloop_lost", False) and getattr(client, "isConnected", False):
                client._eigenloop_lost = True
                drops[client.url] = drops.get(client.url, 0) + 1
            return method(client, *args)
        return hook

    def recorded(method: Callable[..., Any]) -> Callable[..., Any]:
        def watch(url: str, *args: Any, **kw: Any) -> Any:
            st = CURRENT_STREAM.get()
            if st is not None:
                st.urls.add(url)
            return method(url, *args, **kw)
        return watch

    ex.on_error = counted(ex.on_error)
    ex.on_close = counted(ex.on_close)
    ex.watch = recorded(ex.watch)
    ex.watch_multiple = recorded(ex.watch_multiple)
