"""The replay servers speak the protocols a client expects and send the recording unchanged."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import urllib.request

import pytest
import websockets
from source_helpers import capture_lines, run

from daemon.errors import ReplayError
from daemon.tools.capture_servers.binance_server import BinanceReplayServer
from daemon.tools.capture_servers.jetstream_server import JetstreamReplayServer


def test_binance_subscribe_reply_then_recorded_lines_byte_for_byte_and_resume(data_root):
    recorded = capture_lines(data_root, "spot", "spot", "btcusdt", "btcusdt@trade")

    async def body():
        # a raw client that stops reading must not stall its own closing handshake: max_queue=None
        async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"]}, speed=math.inf) as srv:
            async with websockets.connect(srv.ws_url("spot") + "/0", max_queue=None) as ws:
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}))
                assert json.loads(await ws.recv()) == {"result": None, "id": 7}
                srv.play()
                first = [await ws.recv(decode=False) for _ in range(200)]
                assert first == recorded[:200]  # nothing else, nothing changed, nothing skipped
            # a new connection resumes where the replay is: never a line it already sent
            async with websockets.connect(srv.ws_url("spot") + "/1", max_queue=None) as ws:
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}))
                assert json.loads(await ws.recv()) == {"result": None, "id": 1}
                nxt = json.loads(await ws.recv())
                assert nxt["data"]["t"] > json.loads(first[-1])["data"]["t"]
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
                while True:  # trade lines keep coming; the reply is among them
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == 2:
                        assert msg["result"] == ["btcusdt@trade"]
                        break
    run(body(), 30)


def test_binance_rest_snapshot_is_the_recorded_line_and_exchange_info_parses(data_root):
    with gzip.open(data_root / "exchange_binance/usdm_futures/usdm_btcusdt_20240808.gz", "rb") as fh:
        snapshot = next(ln.split(b" ", 1)[1].rstrip(b"\n") for ln in fh if b'{"lastUpdateId"' in ln[:40])

    async def body():
        async with BinanceReplayServer(data_root, {"usdm": ["BTCUSDT"]}, speed=1) as srv:
            def get(path):
                with urllib.request.urlopen(srv.rest_url + path, timeout=5) as r:
                    return r.read()
            depth = await asyncio.to_thread(get, "/fapi/v1/depth?symbol=BTCUSDT&limit=1000")
            assert depth == snapshot
            info = json.loads(await asyncio.to_thread(get, "/fapi/v1/exchangeInfo"))
            assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
            async with websockets.connect(srv.url + "/nowhere/ws") as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1008
    run(body(), 30)


def test_binance_missing_capture_fails_at_start(data_root):
    async def body():
        with pytest.raises(ReplayError):
            await BinanceReplayServer(data_root, {"spot": ["DOGEUSDT"]}).start()
    run(body(), 10)


def test_jetstream_filters_and_cursor_catch_up(data_root):
    lines = (data_root / "social_bluesky" / "jetstream_v1_2026-07-04.jsonl").read_bytes().splitlines()
    events = [json.loads(ln) for ln in lines]

    async def body():
        async with JetstreamReplayServer(data_root, speed=math.inf) as srv:
            url = srv.url + "?wantedCollections=app.bsky.feed.post"
            async with websockets.connect(url) as ws:
                assert await srv.wait_connected(1, 5)
                srv.play()
                await srv.finished.wait()
                want = [ln for ln, e in zip(lines, events)
                        if e["kind"] != "commit" or e["commit"]["collection"] == "app.bsky.feed.post"]
                got = [await ws.recv(decode=False) for _ in want]
                assert got == want
            # after the end: a cursor replays what was played from that time on, in time order
            cut = sorted(e["time_us"] for e in events)[100]
            async with websockets.connect(srv.url + f"?wantedCollections=app.bsky.feed.*&cursor={cut}") as ws:
                want = sorted((e for e in events if e["time_us"] >= cut and
                               (e["kind"] != "commit" or e["commit"]["collection"].startswith("app.bsky.feed."))),
                              key=lambda e: e["time_us"])
                got = [json.loads(await ws.recv()) for _ in want]
                assert got == want
    run(body(), 30)
