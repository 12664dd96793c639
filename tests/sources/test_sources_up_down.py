"""Sources say which of their streams are up (``daemon.sources.up_down``), without any network:
streams on the local Binance replay come up, streams whose host refuses connections stay down."""

from __future__ import annotations

import asyncio
import socket
import time

from source_helpers import Collector, run

from daemon.sources import up_down
from daemon.sources.market import MarketSource
from daemon.sources.social import JetstreamSource
from daemon.tools.capture_servers.binance_server import BinanceReplayServer
from schemas.settings import ExchangeSettings


def _refusing_port() -> int:
    """A port nothing listens on: connecting is refused at once, as with no network route."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # polling interval of a deadline loop


def test_streams_that_cannot_connect_count_as_down_and_delivering_ones_as_up(data_root):
    dead = f"127.0.0.1:{_refusing_port()}"

    async def body():
        sink = Collector()
        async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"]}, speed=20) as srv:
            exchanges = [ExchangeSettings(name="binance", symbols=["BTC/USDT"], ws_url=srv.ws_url("spot"),
                                          rest_url=srv.rest_url),
                         ExchangeSettings(name="binanceusdm", symbols=["BTC/USDT:USDT"], ws_url=f"ws://{dead}/ws",
                                          rest_url=f"http://{dead}")]
            market = MarketSource(exchanges, sink, backoff_initial_s=0.05, backoff_max_s=0.2)
            social = JetstreamSource(f"ws://{dead}/subscribe", sink, backoff_initial_s=0.05, backoff_max_s=0.2)
            async with market, social:
                # nothing connected yet: every stream is down, however it will end
                assert up_down([market, social])["up"] == 0
                srv.play()
                await _until(lambda: all(s.up for s in market.states if s.exchange == "binance"), 60,
                             "the replayed streams to deliver")
                await _until(lambda: social.state.error is not None and all(
                    s.error is not None for s in market.states if s.exchange == "binanceusdm"), 60,
                    "the refused streams to fail once")
                return up_down([market, social]), market.streams_up()

    summary, streams = run(body())
    assert summary == {"up": 2, "total": 5, "down": ["binanceusdm:BTC/USDT:USDT:bids_asks",
                                                    "binanceusdm:BTC/USDT:USDT:trades", "bluesky:jetstream"]}
    assert streams == {"binance:BTC/USDT:trades": True, "binance:BTC/USDT:bids_asks": True,
                       "binanceusdm:BTC/USDT:USDT:trades": False, "binanceusdm:BTC/USDT:USDT:bids_asks": False}
