"""Replay servers for offline runs and tests, and ``ReplayCluster`` to run them together.

    async with ReplayCluster("../shared/data", speed=20, symbols=["BTC/USDT"]) as cluster:
        settings = cluster.sources_settings()       # SourcesSettings pointing at the servers
        market = MarketSource.from_settings(settings, sink)
        ...

The cluster starts the replay once every expected stream has a subscriber (depth deltas must
overlap the snapshot; trades should start at the beginning), or after ``subscribe_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Iterable, Literal


from daemon.logging import get_logger
from daemon.tools.capture_servers.binance_server import BinanceReplayServer
from daemon.tools.capture_servers.jetstream_server import JetstreamReplayServer
from daemon.tools.capture_servers.lockstep import Lockstep
from daemon.tools.capture_servers.okx_server import OkxReplayServer
from schemas.settings import ExchangeSettings, SourcesSettings

__all__ = ["BinanceReplayServer", "JetstreamReplayServer", "OkxReplayServer", "ReplayCluster"]

log = get_logger(__name__)

# market -> (ccxt exchange id, exchange symbol from base, unified symbol from base)
_MARKETS = {
    "spot": ("binance", lambda b: f"{b}USDT", lambda b: f"{b}/USDT"),
    "usdm": ("binanceusdm", lambda b: f"{b}USDT", lambda b: f"{b}/USDT:USDT"),
    "coinm": ("binancecoinm", lambda b: f"{b}USD_PERP", lambda b: f"{b}/USD:{b}"),
}


def _base(symbol: str) -> str:
    s = symbol.upper().split(":")[0]
    if "/" in s:
        return s.split("/")[0]
    for quote in ("USD_PERP", "USDT", "USD"):
        if s.endswith(quote):
            return s[: -len(quote)]
    return s


class ReplayCluster:
    """The Binance and Jetstream replay servers, started together.

    Args:
        data_path: the shared data root (``exchange_binance/`` and ``social_bluesky/`` under it).
        speed: recorded gaps are divided by this (market data); None: paced by the loop, one
            line at a time against the client's acknowledgements (``daemon.tools.capture_servers.lockstep``).
        span_s: paced only: replay the first ``span_s`` seconds of recorded time.
        loop: paced only: play the captures again and again, each pass time-shifted past the last.
        start_after_ns: paced only: consumers have seen recorded time up to here already (an
            earlier run on the same data folder): the first pass is shifted past it.
        symbols: bases or symbols in any form (``BTC``, ``BTC/USDT``, ``BTCUSDT``); each is
            replayed on every market in ``markets``.
        markets: any of ``spot``, ``usdm``, ``coinm``.
        social: also replay Jetstream, at ``social_speed`` (default ``speed``).
        depth: expect depth subscriptions too before starting.
        play: ``"subscribed"`` (start when the sources subscribed, or at the timeout), ``"now"``
            or ``"manual"`` (call ``play()``).
    """

    def __init__(self, data_path: str | Path, speed: float | None = 20.0, symbols: Iterable[str] = ("BTC/USDT",), *,
                 markets: Iterable[str] = ("spot", "usdm"), social: bool = True, social_speed: float | None = None,
                 depth: bool = False, play: Literal["subscribed", "now", "manual"] = "subscribed",
                 subscribe_timeout_s: float = 30.0, host: str = "127.0.0.1", span_s: float | None = None,
                 loop: bool = False, start_after_ns: int | None = None) -> None:
        self.data_path = Path(data_path)
        self.bases = list(dict.fromkeys(_base(s) for s in symbols))
        self.markets = list(markets)
        self.depth, self.play_mode, self.subscribe_timeout_s = depth, play, subscribe_timeout_s
        clock = math.inf if speed is None else speed  # paced: the lockstep releases, not the clock
        self.binance = BinanceReplayServer(
            self.data_path, {m: [_MARKETS[m][1](b) for b in self.bases] for m in self.markets}, speed=clock, host=host)
        self.jetstream = (JetstreamReplayServer(self.data_path, speed=social_speed or clock, host=host)
                          if social else None)
        self.lockstep: Lockstep | None = None
        if speed is None:
            self.lockstep = Lockstep(self.binance, self.jetstream, span_s=span_s, loop=loop,
                                     start_after_ns=start_after_ns)
            self.binance.pace_handler = self.lockstep.handle
        self._starter: asyncio.Task[None] | None = None

    async def start(self) -> "ReplayCluster":
        await self.binance.start()
        if self.jetstream is not None:
            await self.jetstream.start()
        if self.play_mode == "now":
            self.play()
        elif self.play_mode == "subscribed":
            self._starter = asyncio.create_task(self._play_when_subscribed(), name="replay-starter")
        return self

    async def stop(self) -> None:
        if self.lockstep is not None:
            await self.lockstep.stop()
        if self._starter is not None:
            self._starter.cancel()
            with contextlib.suppress(BaseException):
                await self._starter
        await self.binance.stop()
        if self.jetstream is not None:
            await self.jetstream.stop()

    async def __aenter__(self) -> "ReplayCluster":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def play(self) -> None:
        """Start every replay clock now, or the lockstep when paced (idempotent)."""
        if self.lockstep is not None:
            self.lockstep.start()
            return
        self.binance.play()
        if self.jetstream is not None:
            self.jetstream.play()

    async def _play_when_subscribed(self) -> None:
        streams = ["@trade", "@bookTicker"] + (["@depth"] if self.depth else [])
        wanted = [(m, _MARKETS[m][1](b).lower() + s) for m in self.markets for b in self.bases for s in streams]
        waits = [self.binance.wait_subscribed(wanted, self.subscribe_timeout_s)]
        if self.jetstream is not None:
            waits.append(self.jetstream.wait_connected(1, self.subscribe_timeout_s))
        if not all(await asyncio.gather(*waits)):
            log.warning("replay.start_without_all_subscribers", timeout_s=self.subscribe_timeout_s)
        self.play()

    @property
    def exchanges(self) -> list[ExchangeSettings]:
        """One entry per market, pointing ccxt at the replay server."""
        return [ExchangeSettings(name=_MARKETS[m][0], symbols=[_MARKETS[m][2](b) for b in self.bases],
                                 ws_url=self.binance.ws_url(m), rest_url=self.binance.rest_url)
                for m in self.markets]

    @property
    def jetstream_url(self) -> str | None:
        return self.jetstream.url if self.jetstream is not None else None

    def sources_settings(self, base: SourcesSettings | None = None) -> SourcesSettings:
        """``base`` (or the defaults) with the exchanges and the Jetstream URL of this cluster."""
        base = base or SourcesSettings()
        update: dict[str, object] = {"exchanges": self.exchanges, "social": self.jetstream is not None}
        if self.jetstream is not None:
            update["jetstream_url"] = self.jetstream.url
        return base.model_copy(update=update)

    @property
    def pace_url(self) -> str | None:
        """Where the paced client acknowledges frames (``daemon.tools.capture_servers.lockstep``); None unless paced."""
        return self.binance.pace_url if self.lockstep is not None else None

    async def wait_finished(self, timeout: float | None = None) -> None:
        """Until every recording has been played to the end."""
        if self.lockstep is not None:
            await asyncio.wait_for(self.lockstep.finished.wait(), timeout)
            return
        waits = [self.binance.finished.wait()] + ([self.jetstream.finished.wait()] if self.jetstream else [])
        await asyncio.wait_for(asyncio.gather(*waits), timeout)
