"""A loop-paced replay: one line in flight at a time, in recorded order, nothing lost through
ccxt, and the same records on every run (``daemon.tools.capture_servers.lockstep``, ``daemon.sources.pace``)."""

from __future__ import annotations

import asyncio
import gzip
import json

import websockets
from source_helpers import Collector, run

from daemon.sources.market import MarketSource
from daemon.sources.pace import PaceLink
from daemon.tools.capture_servers import ReplayCluster

SPAN_S = 4.0


def recorded(root, prefix: str, symbol: str, streams: tuple[str, ...], span_s: float) -> list[bytes]:
    """The payloads of ``streams`` within ``span_s`` of the capture's first line, in recorded order."""
    out, first = [], None
    for path in sorted((root / "exchange_binance" / "spot").glob(f"{prefix}_{symbol}_*.gz")):
        with gzip.open(path, "rb") as fh:
            for line in fh:
                stamp, _, payload = line.partition(b" ")
                first = first if first is not None else int(stamp)
                if int(stamp) - first > span_s * 1e9:
                    return out
                if any(payload.startswith(b'{"stream":"' + s.encode() + b'"') for s in streams):
                    out.append(payload.rstrip(b"\n"))
    return out


def test_one_line_at_a_time_in_recorded_order_each_after_the_acknowledgement(data_root):
    streams = ("btcusdt@trade", "btcusdt@bookTicker")
    expected = recorded(data_root, "spot", "btcusdt", streams, SPAN_S)

    async def body():
        async with ReplayCluster(data_root, speed=None, symbols=["BTC/USDT"], markets=("spot",), social=False,
                                 span_s=SPAN_S) as cluster:
            lockstep = cluster.lockstep
            async with websockets.connect(cluster.binance.ws_url("spot") + "/0", max_queue=None) as data, \
                    websockets.connect(cluster.pace_url) as pace:
                await data.send(json.dumps({"method": "SUBSCRIBE", "params": list(streams), "id": 1}))
                assert json.loads(await data.recv()) == {"result": None, "id": 1}
                got: list[bytes] = []
                while len(got) < len(expected):
                    got.append(await data.recv(decode=False))
                    # the server put exactly this many frames on the wire: none before its ack
                    assert lockstep.released == len(got)
                    await pace.send(f"ack {len(got)}")
                assert got == expected  # byte for byte, in recorded order, nothing skipped
                assert [await pace.recv(), await pace.recv()] == ["pass 0", f"end {len(expected)}"]
                assert lockstep.finished.is_set()
    run(body(), 60)


def test_through_ccxt_every_recorded_line_becomes_a_record_and_two_runs_agree(data_root):
    lines = recorded(data_root, "spot", "btcusdt", ("btcusdt@trade", "btcusdt@bookTicker"), SPAN_S)
    is_trade = [line.startswith(b'{"stream":"btcusdt@trade"') for line in lines]
    trades = sum(is_trade)
    # a spot ticker carries no time: those before the exchange's first trade cannot be placed
    tickers = len(lines) - trades - is_trade.index(True)

    async def once() -> list[tuple]:
        sink = Collector()
        ended = asyncio.Event()

        async def on_end(lines: int) -> None:
            ended.set()

        async with ReplayCluster(data_root, speed=None, symbols=["BTC/USDT"], markets=("spot",), social=False,
                                 span_s=SPAN_S) as cluster:
            source = MarketSource(cluster.exchanges, sink)
            link = PaceLink(cluster.pace_url, [source], actor_idle=lambda: True, on_end=on_end)
            await source.start()
            await link.start()
            try:
                await asyncio.wait_for(ended.wait(), 60)
            finally:
                await link.stop()
                await source.stop()
        # ccxt keeps only the newest book ticker when two arrive before it is asked: one line in
        # flight at a time, none is collapsed, and a spot ticker's time (the last trade's) is fixed
        assert len(sink.of("market.trade")) == trades
        assert len(sink.of("market.book_ticker")) == tickers
        return [(e.type, e.ts_event, getattr(e, "price", None), getattr(e, "bid_price", None),
                 getattr(e, "ask_price", None)) for e in sink.events]

    first = run(once(), 90)
    assert run(once(), 90) == first


def test_a_loop_plays_the_captures_again_time_shifted_with_fresh_trade_ids(data_root):
    from daemon.tools.capture_servers.lockstep import PASS_GAP_NS, TRADE_ID_STEP

    expected = [json.loads(p)["data"] for p in recorded(data_root, "spot", "btcusdt", ("btcusdt@trade",), 1.0)]

    async def body():
        async with ReplayCluster(data_root, speed=None, symbols=["BTC/USDT"], markets=("spot",), social=False,
                                 span_s=1.0, loop=True) as cluster:
            async with websockets.connect(cluster.binance.ws_url("spot") + "/0", max_queue=None) as data, \
                    websockets.connect(cluster.pace_url) as pace:
                await data.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@bookTicker"],
                                            "id": 1}))
                assert json.loads(await data.recv()) == {"result": None, "id": 1}
                trades: list[dict] = []

                async def read_and_ack() -> None:
                    n = 0
                    async for frame in data:
                        n += 1
                        msg = json.loads(frame)
                        if msg["stream"] == "btcusdt@trade":
                            trades.append(msg["data"])
                        await pace.send(f"ack {n}")

                reader = asyncio.create_task(read_and_ack())
                said = [await pace.recv() for _ in range(4)]
                reader.cancel()
                assert [m.split()[0] for m in said] == ["pass", "end", "pass", "end"]
                assert said[0] == "pass 0" and said[2] == "pass 1" and said[1] == said[3]
                first, second = trades[:len(expected)], trades[len(expected):2 * len(expected)]
                assert first == expected  # the first pass of a fresh folder: the recording itself
                shift_ms = second[0]["T"] - expected[0]["T"]
                assert shift_ms * 1_000_000 >= PASS_GAP_NS
                for a, b in zip(expected, second):
                    assert (b["T"] - a["T"], b["E"] - a["E"], b["t"] - a["t"]) == (shift_ms, shift_ms, TRADE_ID_STEP)
                    assert (b["p"], b["q"]) == (a["p"], a["q"])
    run(body(), 60)
