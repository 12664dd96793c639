"""Market data from exchange websockets through ccxt.pro, normalised into market records.

One ccxt.pro exchange per configured exchange; one supervised task per (exchange, symbol,
channel). Channels: ``trades`` (``watch_trades``), ``bids_asks`` (``watch_bids_asks``, best
bid/ask) and ``order_book`` (``watch_order_book``, top levels). Each task reconnects on its own,
so one dropped stream never stops another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Sequence

from ccxt.base.errors import (AuthenticationError, BadRequest, ExchangeClosedByUser, NotSupported,
                              ArgumentsRequired)
from pydantic import ValidationError

from daemon.errors import ConfigError
from daemon.logging import bind_task, get_logger
from daemon.sources import metrics
from daemon.sources.ccxt_glue import CURRENT_STREAM, install_drop_tracking, install_guard, make_exchange
from schemas.base import Event
from schemas.deadletter import DeadLetter
from schemas.market import BookTicker, DepthUpdate, MarketTrade, StreamGap
from schemas.settings import ExchangeSettings, SourcesSettings

log = get_logger(__name__)

Sink = Callable[[Event], Awaitable[None]]
CHANNELS = ("trades", "bids_asks", "order_book")
# errors that retrying cannot fix: a wrong symbol, an unsupported method, bad credentials
_FATAL = (AuthenticationError, BadRequest, NotSupported, ArgumentsRequired, ExchangeClosedByUser)


@dataclass
class StreamState:
    """What a supervisor knows about its stream (read it for health and status lines)."""

    exchange: str
    symbol: str
    channel: str
    up: bool = False
    events: int = 0
    drops: int = 0
    last_event_ns: int = 0
    error: str | None = None  # the last error; set for good when the stream gave up
    failed: bool = False
    urls: set[str] = field(default_factory=set)  # the websocket URLs its watch calls use
    seen_losses: int = 0  # connection losses on those URLs already accounted for
    parked: bool = False  # waiting inside a watch call for ccxt's next frame
    handled: int = 0  # watch results handled (each frame one, when frames come one at a time)


@dataclass
class _Exchange:
    ex: Any
    settings: ExchangeSettings
    clock_ms: int = 0  # newest exchange timestamp seen, for records that carry none
    losses: dict[str, int] = field(default_factory=dict)  # connection losses per ws URL
    seen_trades: dict[str, OrderedDict[str, None]] = field(default_factory=dict)


class MarketSource:
    """Trades and top of book from ccxt.pro exchanges, emitted to ``sink`` as MarketTrade,
    BookTicker, DepthUpdate and StreamGap records.

    Delivery: each record is awaited in ``sink`` before the stream asks ccxt for more, so a slow
    sink slows its stream (ccxt buffers meanwhile: up to ``trades_limit`` trades; book tickers
    and books collapse to the newest state). Trades are deduplicated by trade id over the last
    ``dedupe_window`` ids per symbol, so ccxt's buffer and reconnects never yield one twice.
    Nothing is retried towards the sink: if ``sink`` raises, that stream stops, the error is
    kept in ``states`` and re-raised by ``wait()``.

    Ordering: within one stream, the exchange's order. Across streams (and symbols), none.

    Drops: when a stream that was up fails (closed socket, timeout, parser error), one
    ``StreamGap`` is emitted at once (``gap_start_ns`` = when its last record arrived), then it
    reconnects with exponential backoff and full jitter between ``backoff_initial_s`` and
    ``backoff_max_s``; each retry moves the reconnect counter. Errors retrying cannot fix (bad
    symbol, unsupported method) stop only that stream (``StreamState.failed``).

    Malformed frames are counted and sent as ``DeadLetter`` to ``dead_letter`` with the raw
    frame; records that fail validation after ccxt parsed them go there too, with ccxt's copy
    of the raw payload. Neither stops a stream.

    Timestamps: ``ts_event`` is the exchange's time. Records without one (the spot bookTicker)
    get the newest exchange time seen on that exchange; a book ticker that comes before any
    exchange time is known is counted as skipped (``reason="no exchange time yet"``), not given
    the local clock's time, which in a replay lies years away from the market's.

    Cancellation: ``stop()`` cancels every stream task, including a ``sink`` call in progress,
    then closes the exchanges' connections. ``start()`` after ``stop()`` is not supported.
    """

    def __init__(self, exchanges: Sequence[ExchangeSettings], sink: Sink, *, dead_letter: Sink | None = None,
                 channels: Iterable[str] = ("trades", "bids_asks"), backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, trades_limit: int = 10_000, book_levels: int = 20,
                 dedupe_window: int = 50_000, exchange_options: dict[str, dict[str, Any]] | None = None,
                 rng: random.Random | None = None) -> None:
        self.channels = tuple(channels)
        bad = set(self.channels) - set(CHANNELS)
        if bad:
            raise ConfigError(f"unknown channels {sorted(bad)}; known: {CHANNELS}")
        if not exchanges:
            raise ConfigError("no exchanges configured")
        self.exchanges = list(exchanges)
        self.sink = sink
        self.dead_letter = dead_letter
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.trades_limit, self.book_levels, self.dedupe_window = trades_limit, book_levels, dedupe_window
        self.exchange_options = exchange_options or {}
        self.rng = rng or random.Random()
        self.states: list[StreamState] = []
        self._xs: list[_Exchange] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._dlq: asyncio.Queue[DeadLetter] = asyncio.Queue(10_000)
        # a loop-paced replay (``daemon.sources.pace``) reads these to tell when every frame is handled
        self.frames_in = 0
        self.frames_bad = 0
        self.on_progress: Callable[[], None] | None = None

    @classmethod
    def from_settings(cls, settings: SourcesSettings, sink: Sink, **kw: Any) -> "MarketSource":
        kw.setdefault("backoff_initial_s", settings.backoff_initial_s)
        kw.setdefault("backoff_max_s", settings.backoff_max_s)
        return cls(settings.exchanges, sink, **kw)

    # lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the exchanges (``ConfigError`` on a bad one) and start one task per stream.
        Returns at once; connecting and loading markets happen inside the tasks."""
        for cfg in self.exchanges:
            ex = make_exchange(cfg.name, cfg.symbols, ws_url=cfg.ws_url, rest_url=cfg.rest_url,
                               trades_limit=self.trades_limit, options=self.exchange_options.get(cfg.name))
            x = _Exchange(ex=ex, settings=cfg)
            install_guard(ex, lambda raw, reason, etype, _x=x: self._bad_frame(_x, raw, reason, etype),
                          on_data=self._frame_in)
            install_drop_tracking(ex, x.losses)
            self._xs.append(x)
            for symbol in cfg.symbols:
                for channel in self.channels:
                    if channel == "bids_asks" and not ex.has.get("watchBidsAsks"):
                        channel = "order_book"  # top of book from the book instead
                    st = StreamState(exchange=ex.id, symbol=symbol, channel=channel)
                    self.states.append(st)
                    self._tasks.append(asyncio.create_task(self._supervise(x, st), name=f"{ex.id}-{symbol}-{channel}"))
        self._tasks.append(asyncio.create_task(self._pump_dead_letters(), name="market-dead-letters"))
        log.info("market.started", streams=[f"{s.exchange}:{s.symbol}:{s.channel}" for s in self.states])

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        for x in self._xs:
            with contextlib.suppress(Exception):
                await x.ex.close()
        log.info("market.stopped")

    def _frame_in(self) -> None:
        self.frames_in += 1

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    def quiescent(self) -> bool:
        """Every data frame received so far is handled and every stream waits for the next one.
        Exact only while frames arrive one at a time (a paced replay): ccxt collapses book
        tickers that arrive faster than a stream reads them."""
        handled = sum(st.handled for st in self.states) + self.frames_bad
        return self.frames_in <= handled and all(st.parked or st.failed for st in self.states)

    def streams_up(self) -> dict[str, bool]:
        """``exchange:symbol:channel`` -> up: it has delivered since its last (re)connect."""
        return {f"{s.exchange}:{s.symbol}:{s.channel}": s.up for s in self.states}

    async def wait(self) -> None:
        """Return when every stream task has ended; re-raise a sink error if one stopped it."""
        results = await asyncio.gather(*self._tasks[:-1], return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                raise r

    async def __aenter__(self) -> "MarketSource":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # supervision ---------------------------------------------------------------------------
    def _losses(self, x: _Exchange, st: StreamState) -> int:
        return sum(x.losses.get(u, 0) for u in st.urls)

    async def _supervise(self, x: _Exchange, st: StreamState) -> None:
        bind_task(task="market", exchange=st.exchange, symbol=st.symbol, channel=st.channel)
        CURRENT_STREAM.set(st)
        attempt = 0
        fresh = True  # the next book is the first after a (re)subscribe
        while True:
            try:
                st.parked = True
                self._progress()  # seen after this task is suspended in ccxt's watch
                result = await self._watch(x, st)
            except asyncio.CancelledError:
                raise
            except _FATAL as e:
                st.up, st.failed, st.error, st.parked = False, True, f"{type(e).__name__}: {e}", False
                self._progress()
                log.error("market.stream_failed", error=st.error)
                return
            except Exception as e:  # ccxt NetworkError and friends, parser bugs: reconnect
                st.parked = False
                attempt += 1
                st.error = f"{type(e).__name__}: {e}"[:500]
                st.seen_losses = self._losses(x, st)
                if st.up:
                    st.up, st.drops = False, st.drops + 1
                    await self._gap(x, st, st.error, attempt)
                metrics.RECONNECTS.labels(source=self._label(x, st.symbol), stream=st.channel).inc()
                delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
                delay = self.rng.uniform(0.1 * delay, delay)  # jitter: reconnects must not arrive in lockstep
                log.warning("market.stream_down", error=st.error, attempt=attempt, retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
                fresh = True
                continue
            if not st.up:
                # losses on this URL so far (another stream's, an earlier connection's) are not news
                st.seen_losses = self._losses(x, st)
                log.info("market.stream_up", after_attempts=attempt)
            elif self._losses(x, st) > st.seen_losses:
                # the socket died while this stream was busy elsewhere and ccxt dialled again
                # inside this call: a drop all the same, and data in between is missing
                st.seen_losses = self._losses(x, st)
                st.drops += 1
                metrics.RECONNECTS.labels(source=self._label(x, st.symbol), stream=st.channel).inc()
                log.warning("market.stream_redialled")
                await self._gap(x, st, "connection lost between reads; ccxt dialled again", 1)
                fresh = True
            st.up, attempt, st.parked = True, 0, False
            try:
                await self._emit(x, st, result, fresh)
                st.handled += 1
            except Exception as e:  # from the sink: not ours to retry
                st.up, st.failed, st.error = False, True, f"sink: {type(e).__name__}: {e}"
                log.error("market.sink_failed", error=st.error)
                raise
            fresh = False

    async def _watch(self, x: _Exchange, st: StreamState) -> Any:
        if st.channel == "trades":
            return await x.ex.watch_trades(st.symbol)
        if st.channel == "bids_asks":
            return await x.ex.watch_bids_asks([st.symbol])
        return await x.ex.watch_order_book(st.symbol)

    async def _gap(self, x: _Exchange, st: StreamState, reason: str, attempt: int) -> None:
        now = time.time_ns()
        gap = StreamGap(exchange=x.ex.id, symbol=st.symbol, stream=st.channel, reason=reason, attempt=attempt,
                        gap_start_ns=st.last_event_ns or now, ts_event=now, ts_ingest=now,
                        source=self._label(x, st.symbol), key=st.symbol)
        await self._send(gap, st)

    # normalisation -------------------------------------------------------------------------
    def _label(self, x: _Exchange, symbol: str) -> str:
        market = (x.ex.markets or {}).get(symbol)
        return f"{x.ex.id}:{market['type'] if market else 'unknown'}"

    def _ts(self, x: _Exchange, ms: Any) -> int:
        if isinstance(ms, (int, float)) and ms > 0:
            x.clock_ms = max(x.clock_ms, int(ms))
            return int(ms) * 1_000_000
        return x.clock_ms * 1_000_000 if x.clock_ms else time.time_ns()

    async def _send(self, event: Event, st: StreamState) -> None:
        await self.sink(event)
        st.events += 1
        st.last_event_ns = event.ts_ingest
        metrics.EVENTS_IN.labels(source=event.source, type=event.type).inc()

    async def _emit(self, x: _Exchange, st: StreamState, result: Any, fresh: bool) -> None:
        now = time.time_ns()
        source = self._label(x, st.symbol)
        if st.channel == "trades":
            seen = x.seen_trades.setdefault(st.symbol, OrderedDict())
            for t in result:
                tid = str(t.get("id"))
                if tid in seen:
                    metrics.DUPLICATES.labels(source=source).inc()
                    continue
                seen[tid] = None
                if len(seen) > self.dedupe_window:
                    seen.popitem(last=False)
                await self._record(st, t.get("info"), source, lambda: MarketTrade(
                    exchange=x.ex.id, symbol=t["symbol"], trade_id=tid, price=float(t["price"]),
                    qty=float(t["amount"]), side=t["side"], ts_event=self._ts(x, t.get("timestamp")),
                    ts_ingest=now, source=source, key=t["symbol"]))
        elif st.channel == "bids_asks":
            for sym, tk in result.items():
                info = tk.get("info") or {}
                # no time of its own and none from this exchange yet: the local clock would put a
                # replayed ticker years off the market's time (and its event-time watermark)
                untimed = not isinstance(tk.get("timestamp"), (int, float)) and not x.clock_ms
                await self._record(st, info, source, lambda: BookTicker(
                    exchange=x.ex.id, symbol=sym, bid_price=float(tk["bid"]), bid_qty=float(tk["bidVolume"]),
                    ask_price=float(tk["ask"]), ask_qty=float(tk["askVolume"]),
                    update_id=int(info["u"]) if info.get("u") is not None else None,
                    ts_event=0 if untimed else self._ts(x, tk.get("timestamp")), ts_ingest=now, source=source,
                    key=sym), skip="no exchange time yet" if untimed else None)
        else:
            n = self.book_levels
            await self._record(st, None, source, lambda: DepthUpdate(
                exchange=x.ex.id, symbol=st.symbol, is_snapshot=fresh,
                bids=[(float(p), float(q)) for p, q, *_ in result["bids"][:n]],
                asks=[(float(p), float(q)) for p, q, *_ in result["asks"][:n]],
                update_id=result.get("nonce"), ts_event=self._ts(x, result.get("timestamp")),
                ts_ingest=now, source=source, key=st.symbol))

    async def _record(self, st: StreamState, raw: Any, source: str, build: Callable[[], Event],
                      skip: str | None = None) -> None:
        """Build and send one record; a malformed one is dead-lettered, a valid one with a
        ``skip`` reason only counted."""
        try:
            event = build()
        except (ValidationError, TypeError, ValueError, KeyError) as e:
            metrics.MALFORMED.labels(source=source).inc()
            self._queue_dead(DeadLetter.from_input(
                json.dumps(raw, default=str) if raw is not None else None, source_topic="market.events",
                reason=f"{st.channel} record failed validation: {e}"[:1000], error_type=type(e).__name__,
                source=source, key=st.symbol))
            return
        if skip is not None:
            metrics.SKIPPED.labels(source=source, reason=skip).inc()
            return
        await self._send(event, st)

    # dead letters --------------------------------------------------------------------------
    def _bad_frame(self, x: _Exchange, raw: Any, reason: str, error_type: str) -> None:
        # called synchronously from ccxt's receive loop: count and queue, never block or raise
        syms = x.settings.symbols
        source = self._label(x, syms[0]) if syms else x.ex.id
        self.frames_bad += 1
        self._progress()
        metrics.MALFORMED.labels(source=source).inc()
        # ccxt's receive loop inherited the ids of the stream that opened the connection, but a
        # frame that failed to parse belongs to no stream yet: say so rather than blame that one
        log.warning("market.malformed_frame", source=source, reason=reason, task="market-connection",
                    exchange=x.ex.id, symbol=None, channel=None)
        self._queue_dead(DeadLetter.from_input(raw if isinstance(raw, (str, bytes)) else repr(raw),
                                               source_topic="market.events", reason=reason,
                                               error_type=error_type, source=source, key=source))

    def _queue_dead(self, dl: DeadLetter) -> None:
        try:
            self._dlq.put_nowait(dl)
        except asyncio.QueueFull:
            log.error("market.dead_letters_overflow", reason=dl.reason)

    async def _pump_dead_letters(self) -> None:
        while True:
            dl = await self._dlq.get()
            if self.dead_letter is None:
                log.warning("market.dead_letter_unrouted", reason=dl.reason, raw=dl.raw[:200])
                continue
            try:
                await self.dead_letter(dl)
            except Exception as e:  # the dead-letter path must not take the source down
                log.error("market.dead_letter_failed", error=repr(e), reason=dl.reason)
