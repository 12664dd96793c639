"""ccxt.pro's own OKX parsers (real, unpatched) against the OKX v5 replay server.

The recording (``exchange_okx/OKX.ws.1.0``, cryptofeed's sample data; see the server's module
doc for its licence and attribution) is read here independently of the server, as ground truth.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from source_helpers import Collector, run

from daemon.sources import metrics
from daemon.sources.ccxt_glue import make_exchange, okx_frame_problem
from daemon.sources.market import MarketSource
from daemon.tools.capture_servers.okx_server import REPLAY_OPTIONS, OkxReplayServer, read_recording

INST, SYM = "BTC-USDT", "BTC/USDT"


def recorded(root: Path, channel: str, inst: str = INST) -> list[dict]:
    """The frames OKX sent on (channel, inst), straight from the file: ``<ts>: <json>`` lines."""
    out = []
    for line in (root / "exchange_okx" / "OKX.ws.1.0").read_text().splitlines():
        head, _, body = line.partition(": ")
        if " " in head or not body:
            continue
        msg = json.loads(body)
        if msg.get("arg") == {"channel": channel, "instId": inst} and "event" not in msg:
            out.append(msg)
    return out


def book_after(frames: list[dict], depth: int) -> tuple[list, list]:
    """The top ``depth`` levels after the snapshot and every update (size 0 deletes a level)."""
    sides: dict[str, dict[float, float]] = {"bids": {}, "asks": {}}
    for f in frames:
        for item in f["data"]:
            for side in sides:
                if f["action"] == "snapshot":
                    sides[side].clear()
                for px, sz, *_ in item[side]:
                    if float(sz) == 0:
                        sides[side].pop(float(px), None)
                    else:
                        sides[side][float(px)] = float(sz)
    bids = sorted(sides["bids"].items(), reverse=True)[:depth]
    asks = sorted(sides["asks"].items())[:depth]
    return [list(b) for b in bids], [list(a) for a in asks]


@pytest.fixture(scope="module")
def okx_root(data_root: Path) -> Path:
    if not (data_root / "exchange_okx" / "OKX.ws.1.0").is_file():
        pytest.skip("OKX recording not found")
    return data_root


def test_the_recording_is_read_frame_for_frame(okx_root):
    frames = read_recording(okx_root / "exchange_okx" / "OKX.ws.1.0")
    ours = [f for f in frames if f.key[1] == INST]
    for channel in ("books", "trades", "tickers"):
        truth = recorded(okx_root, channel)
        mine = [json.loads(f.payload) for f in ours if f.key[0] == channel]
        assert mine == truth and len(truth) > 20
    assert [f.ts_ns for f in frames] == sorted(f.ts_ns for f in frames)
    # the stamp is the recorder's receive time: 2022-05-13, shortly after the exchange's own ts
    first_trade = next(f for f in ours if f.key[0] == "trades")
    assert first_trade.ts_ns == 1_652_459_225_507_260_300
    assert first_trade.payload.startswith(b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{')


def test_ccxt_okx_watchers_get_the_recorded_values(okx_root):
    trades_truth = [d for f in recorded(okx_root, "trades") for d in f["data"]]
    tickers_truth = recorded(okx_root, "tickers")
    books_truth = recorded(okx_root, "books")
    last_book_ts = int(books_truth[-1]["data"][0]["ts"])

    async def body():
        async with OkxReplayServer(okx_root, [INST], speed=20) as srv:
            ex = make_exchange("okx", [SYM], ws_url=srv.ws_url, rest_url=srv.rest_url, options=REPLAY_OPTIONS)
            try:
                await ex.load_markets()
                assert ex.markets[SYM]["id"] == INST and ex.markets[SYM]["spot"]
                first_book = asyncio.create_task(ex.watch_order_book(SYM))
                first_trades = asyncio.create_task(ex.watch_trades(SYM))
                first_ticker = asyncio.create_task(ex.watch_ticker(SYM))
                assert await srv.wait_subscribed([("books", INST), ("trades", INST), ("tickers", INST)], 20)
                srv.play()
                ob = await asyncio.wait_for(first_book, 30)
                # ccxt mutates one book in place: read it now (no frame is handled in between);
                # the updates right behind the snapshot may already be in
                assert books_truth[0]["action"] == "snapshot"
                assert ob["timestamp"] >= int(books_truth[0]["data"][0]["ts"])
                upto = [f for f in books_truth if int(f["data"][0]["ts"]) <= ob["timestamp"]]
                assert (ob["bids"][:10], ob["asks"][:10]) == book_after(upto, 10)
                trades = list(await asyncio.wait_for(first_trades, 30))
                tk = await asyncio.wait_for(first_ticker, 30)
                t0 = tickers_truth[0]["data"][0]
                assert (tk["bid"], tk["ask"], tk["last"], tk["timestamp"]) == (
                    float(t0["bidPx"]), float(t0["askPx"]), float(t0["last"]), int(t0["ts"]))
                assert trades and trades[0]["id"] == trades_truth[0]["tradeId"]
                # ccxt's trade cache (what its parser made of every frame); a watch call's result is
                # only what is new since the previous call
                while len(ex.trades[SYM]) < len(trades_truth):
                    await asyncio.wait_for(ex.watch_trades(SYM), 30)
                trades = list(ex.trades[SYM])
                while ob["timestamp"] < last_book_ts:
                    ob = await asyncio.wait_for(ex.watch_order_book(SYM), 30)
                await asyncio.wait_for(srv.finished.wait(), 30)
            finally:
                await ex.close()
        assert [(t["id"], t["price"], t["amount"], t["side"], t["timestamp"]) for t in trades] == [
            (d["tradeId"], float(d["px"]), float(d["sz"]), d["side"], int(d["ts"])) for d in trades_truth]
        # the book after all 97 updates is the one the raw frames give: nothing lost or reordered
        bids, asks = book_after(books_truth, 10)
        assert ob["bids"][:10] == bids and ob["asks"][:10] == asks

    run(body(), 90)


def test_okx_frame_checks():
    good = {"arg": {"channel": "trades", "instId": INST},
                            "data": [{"instId": INST, "tradeId": "1", "px": "1", "sz": "1", "side": "buy", "ts": "1"}]}
    assert okx_frame_problem(good) is None
    assert okx_frame_problem("pong") is None
    assert okx_frame_problem({"event": "subscribe", "arg": {"channel": "trades", "instId": INST}}) is None
    assert okx_frame_problem({"event": "error", "code": "60012", "msg": "x"}) is None  # ccxt's to handle
    assert okx_frame_problem({"arg": {"channel": "mark-price", "instId": INST}, "data": []}) is None  # not checked
    assert "px" in okx_frame_problem({**good, "data": [{"instId": INST, "tradeId": "1"}]})
    assert "list" in okx_frame_problem({**good, "data": {"px": "1"}})
    assert okx_frame_problem({"hello": "world"}).startswith("unrecognised")
    assert okx_frame_problem([1, 2]) == "not a JSON object"
    books = {"arg": {"channel": "books", "instId": INST}, "action": "update",
             "data": [{"asks": "x", "bids": [], "ts": "1"}]}
    assert "lists" in okx_frame_problem(books)
    assert "action" in okx_frame_problem({**books, "action": "replace"})


def test_malformed_okx_frames_become_dead_letters_and_streams_go_on(okx_root):
    truth = [d["tradeId"] for f in recorded(okx_root, "trades") for d in f["data"]]
    bad = [
        ("{not json", False),
        ('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","px":"1"}]}', False),
        ('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":"nope"}', False),
        ('{"hello":"world"}', False),
        (b"\xff\x00 not utf-8", True),
    ]
    bad_ticker = '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","ts":"1"}]}'

    async def body():
        sink, dead = Collector(), Collector()
        before = metrics.sample("eigenloop_source_malformed_frames", source="okx:spot")
        async with OkxReplayServer(okx_root, [INST], speed=20) as srv:
            src = MarketSource([srv.exchange_settings()], sink, dead_letter=dead,
                               exchange_options={"okx": REPLAY_OPTIONS})
            async with src:
                assert await srv.wait_subscribed([("trades", INST), ("tickers", INST)], 20)
                for frame, binary in bad:
                    assert await srv.inject("trades", INST, frame, binary=binary) == 1
                assert await srv.inject("tickers", INST, bad_ticker) == 1
                await dead.wait(lambda c: len(c.events) == len(bad) + 1, 20, "a dead letter per bad frame")
                srv.play()
                await sink.wait(lambda c: len(c.of("market.trade")) == len(truth) and
                                len(c.of("market.book_ticker")) >= 10, 60, "records after the bad frames")
                assert all(s.up and s.drops == 0 and not s.failed for s in src.states)
        assert not sink.of("market.stream_gap")
        trades = sink.of("market.trade")
        assert [t.trade_id for t in trades] == truth  # ccxt's state was not disturbed
        assert all(t.exchange == "okx" and t.symbol == t.key == SYM for t in trades)
        # OKX's own clock (2022-05-13), from each ticker's ts
        assert all(b.exchange == "okx" and 1_652_459_220 * 10**9 < b.ts_event < 1_652_459_240 * 10**9
                   for b in sink.of("market.book_ticker"))
        raws = sorted(d.raw_bytes() for d in dead.events)
        assert raws == sorted([f.encode() if isinstance(f, str) else f for f, _ in bad] + [bad_ticker.encode()])
        assert all(d.source_topic == "market.events" and d.reason and d.source == "okx:spot" for d in dead.events)
        assert metrics.sample("eigenloop_source_malformed_frames", source="okx:spot") == before + len(dead.events)

    run(body(), 90)
