"""ccxt.pro (real, unpatched parsing) against the Binance replay server."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from source_helpers import Collector, capture_data, run
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from daemon.errors import ConfigError
from daemon.sources import metrics
from daemon.sources.ccxt_glue import make_exchange
from daemon.sources.market import MarketSource
from daemon.tools.capture_servers.binance_server import BinanceReplayServer
from schemas.settings import ExchangeSettings, SourcesSettings

SPOT, USDM = "BTC/USDT", "BTC/USDT:USDT"


def _settings(srv: BinanceReplayServer, usdm: bool = True) -> list[ExchangeSettings]:
    out = [ExchangeSettings(name="binance", symbols=[SPOT], ws_url=srv.ws_url("spot"), rest_url=srv.rest_url)]
    if usdm:
        out.append(ExchangeSettings(name="binanceusdm", symbols=[USDM], ws_url=srv.ws_url("usdm"),
                                    rest_url=srv.rest_url))
    return out


async def _subscribed(srv: BinanceReplayServer, markets: list[str], streams=("btcusdt@trade", "btcusdt@bookTicker")):
    ok = await srv.wait_subscribed([(m, s) for m in markets for s in streams], timeout=20)
    assert ok, "the source did not subscribe to every stream"


def test_trades_and_book_tickers_match_the_capture_spot_and_usdm(data_root):
    truth = {
        "binance": capture_data(data_root, "spot", "spot", "btcusdt", "btcusdt@trade"),
        "binanceusdm": capture_data(data_root, "usdm_futures", "usdm", "btcusdt", "btcusdt@trade"),
    }
    tickers = {
        "binance": {d["u"]: d for d in capture_data(data_root, "spot", "spot", "btcusdt", "btcusdt@bookTicker")},
        "binanceusdm": {d["u"]: d for d in capture_data(data_root, "usdm_futures", "usdm", "btcusdt",
                                                         "btcusdt@bookTicker")},
    }

    async def body():
        sink = Collector()
        with capture_logs(processors=[merge_contextvars]) as logs:
            async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"], "usdm": ["BTCUSDT"]}, speed=20) as srv:
                src = MarketSource(_settings(srv), sink, trades_limit=50_000)
                async with src:
                    await _subscribed(srv, ["spot", "usdm"])
                    srv.play()
                    await sink.wait(lambda c: all(len(c.of("market.trade", exchange=x)) >= 300 and
                                                  len(c.of("market.book_ticker", exchange=x)) >= 20
                                                  for x in truth), 60, "trades and book tickers from both markets")
        # each stream's task binds its ids once: every line it writes says which stream it is
        ups = [e for e in logs if e["event"] == "market.stream_up"]
        assert sorted((e["task"], e["exchange"], e["symbol"], e["channel"]) for e in ups) == \
            sorted(("market", st.exchange, st.symbol, st.channel) for st in src.states)
        assert not [e for e in logs if e["event"] == "market.started" and "symbol" in e], "ids leaked out of a task"
        for ex, rows in truth.items():
            trades = sink.of("market.trade", exchange=ex)
            # subscribed before the replay started: the trades are the capture's, from its first,
            # in order, none missing, none repeated
            assert [t.trade_id for t in trades] == [str(d["t"]) for d in rows[: len(trades)]]
            for t, d in zip(trades, rows):
                assert (t.price, t.qty, t.ts_event) == (float(d["p"]), float(d["q"]), d["T"] * 1_000_000)
                assert t.side == ("sell" if d["m"] else "buy")
                assert t.key == t.symbol == (SPOT if ex == "binance" else USDM)
            for b in sink.of("market.book_ticker", exchange=ex):
                d = tickers[ex][b.update_id]
                assert (b.bid_price, b.bid_qty, b.ask_price, b.ask_qty) == (
                    float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"]))
        assert {e.source for e in sink.events} == {"binance:spot", "binanceusdm:swap"}
        assert not sink.of("market.stream_gap")

    run(body(), 120)


@pytest.mark.parametrize("abort", [False, True], ids=["close", "abort"])
def test_websocket_drop_mid_replay_reconnects_with_a_gap_and_no_repeats(data_root, abort):
    truth = [str(d["t"]) for d in capture_data(data_root, "spot", "spot", "btcusdt", "btcusdt@trade")]
    channels = ("trades", "bids_asks", "order_book")

    async def body():
        sink = Collector()
        label = {"source": "binance:spot", "stream": "trades"}
        before = metrics.sample("eigenloop_source_reconnects", **label)
        async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"]}, speed=20) as srv:
            src = MarketSource(_settings(srv, usdm=False), sink, channels=channels, backoff_initial_s=0.05,
                               backoff_max_s=0.5, rng=random.Random(1))
            async with src:
                await _subscribed(srv, ["spot"], ("btcusdt@trade", "btcusdt@bookTicker", "btcusdt@depth"))
                srv.play()
                await sink.wait(lambda c: len(c.of("market.trade")) >= 200, 60, "trades before the drop")
                assert await srv.drop_all(abort=abort) == 3
                await sink.wait(lambda c: {g.stream for g in c.of("market.stream_gap")} == set(channels),
                                30, "a StreamGap per dropped stream")
                n_at_gap = len(sink.of("market.trade"))
                await sink.wait(lambda c: len(c.of("market.trade")) >= n_at_gap + 200 and
                                len([b for b in c.of("market.depth") if b.is_snapshot]) == 2,
                                60, "trades and a fresh book after the drop")
                assert all(s.up and s.drops == 1 and not s.failed for s in src.states)
        gaps = sink.of("market.stream_gap")
        assert len(gaps) == 3 and all(g.symbol == SPOT and g.key == SPOT and g.attempt == 1 for g in gaps)
        gap = next(g for g in gaps if g.stream == "trades")
        idx = sink.events.index(gap)
        last_before = [e for e in sink.events[:idx] if e.type == "market.trade"][-1]
        assert gap.gap_start_ns >= last_before.ts_ingest and gap.ts_event >= gap.gap_start_ns
        ids = [t.trade_id for t in sink.of("market.trade")]
        assert len(ids) == len(set(ids)), "a trade id was repeated"
        pos = [truth.index(i) for i in ids]
        assert pos == sorted(pos), "trades out of capture order"
        # the book re-synchronised from the server's snapshot after the reconnect: update ids go on rising
        books = sink.of("market.depth")
        assert [b.update_id for b in books] == sorted(b.update_id for b in books)
        assert metrics.sample("eigenloop_source_reconnects", **label) >= before + 1

    run(body(), 150)


def test_a_failing_sink_stops_its_stream_and_is_reported(data_root):
    async def body():
        async def sink(event):
            raise RuntimeError("broker gone")

        async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"]}, speed=20) as srv:
            async with MarketSource(_settings(srv, usdm=False), sink, channels=("trades",)) as src:
                await _subscribed(srv, ["spot"], ("btcusdt@trade",))
                srv.play()
                with pytest.raises(RuntimeError, match="broker gone"):
                    await asyncio.wait_for(src.wait(), 30)
                assert src.states[0].failed and "broker gone" in src.states[0].error

    run(body(), 60)


def test_exchanges_are_built_for_live_and_replay_urls():
    okx = make_exchange("okx", ["BTC/USDT", "ETH/USDT"])
    assert okx.id == "okx" and okx.urls["api"]["ws"].startswith("wss://ws.okx.com")
    assert okx.options["tradesLimit"] >= 10_000
    okx = make_exchange("okx", ["BTC/USDT"], ws_url="ws://127.0.0.1:9/ws/v5", rest_url="http://127.0.0.1:9")
    assert okx.urls["api"]["ws"] == "ws://127.0.0.1:9/ws/v5"
    assert okx.urls["api"]["rest"] == "http://127.0.0.1:9"
    spot = make_exchange("binance", [SPOT], ws_url="ws://h:1/spot/stream/ws", rest_url="http://h:1")
    assert spot.urls["api"]["ws"]["spot"] == "ws://h:1/spot/stream/ws"
    assert spot.urls["api"]["public"] == "http://h:1/api/v3"
    assert spot.options["fetchMarkets"]["types"] == ["spot"]
    fut = make_exchange("binanceusdm", [USDM], ws_url="ws://h:1/usdm/ws", rest_url="http://h:1")
    assert fut.urls["api"]["ws"]["linear"] == "ws://h:1/usdm/ws" and fut.urls["api"]["fapiPublic"] == "http://h:1/fapi/v1"
    with pytest.raises(ConfigError):
        make_exchange("binance", [SPOT, USDM], ws_url="ws://h:1/x")
    with pytest.raises(ConfigError):
        make_exchange("nosuchexchange", [SPOT])
    # the defaults (binance and okx) build without touching the network
    source = MarketSource.from_settings(SourcesSettings(), Collector())
    assert [x.name for x in source.exchanges] == ["binance", "okx"]
    with pytest.raises(ConfigError):
        MarketSource(SourcesSettings().exchanges, Collector(), channels=("candles",))


def test_malformed_frames_become_dead_letters_and_streams_go_on(data_root):
    truth = [str(d["t"]) for d in capture_data(data_root, "spot", "spot", "btcusdt", "btcusdt@trade")]
    trade_frames = [
        ("{not json", False),  # undecodable
        ('{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","p":"1"}}', False),  # fields missing
        ('{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"x","q":"1","T":"x"}}', False),
        ('{"stream":"btcusdt@trade","data":{"hello":"world"}}', False),  # no event type at all
        (b"\xff\x00 not utf-8", True),  # binary frame ccxt cannot decode
    ]
    bad_ticker = '{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"x","B":"1","a":"2","A":"1"}}'

    async def body():
        sink, dead = Collector(), Collector()
        before = metrics.sample("eigenloop_source_malformed_frames", source="binance:spot")
        async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"]}, speed=20) as srv:
            async with MarketSource(_settings(srv, usdm=False), sink, dead_letter=dead) as src:
                await _subscribed(srv, ["spot"])
                for frame, binary in trade_frames:
                    assert await srv.inject("spot", "btcusdt@trade", frame, binary=binary) == 1
                await srv.inject("spot", "btcusdt@bookTicker", bad_ticker)
                await dead.wait(lambda c: len(c.events) == len(trade_frames) + 1, 20, "a dead letter per bad frame")
                srv.play()
                await sink.wait(lambda c: len(c.of("market.trade")) >= 100 and len(c.of("market.book_ticker")) >= 5,
                                60, "records after the bad frames")
                assert all(s.up and s.drops == 0 for s in src.states)
        assert not sink.of("market.stream_gap")
        trades = sink.of("market.trade")
        assert [t.trade_id for t in trades] == truth[: len(trades)]  # ccxt's state was not disturbed
        # frames ccxt never parsed are kept byte for byte (binary ones base64 in the record); a
        # ticker ccxt parsed but that fails validation is kept as ccxt's copy of the payload
        raws = [d.raw_bytes() for d in dead.events]
        assert sorted(raws) == sorted([f.encode() if isinstance(f, str) else f for f, _ in trade_frames] +
                                      [json.dumps(json.loads(bad_ticker)["data"]).encode()])
        assert [d.raw_encoding for d in dead.events].count("base64") == 1
        assert all(d.source_topic == "market.events" and d.reason and d.source == "binance:spot" for d in dead.events)
        assert metrics.sample("eigenloop_source_malformed_frames", source="binance:spot") == before + len(dead.events)

    run(body(), 90)
