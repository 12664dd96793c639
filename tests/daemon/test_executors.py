"""Executors: the kill switch (file and HTTP), hard limits, and live trading's two switches."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest

from daemon.service.executors import KillSwitch, LiveTradingRefused, PaperExecutor
from daemon.service.http import HttpServer
from daemon.service.live_executor import LiveExecutor, LiveVenue
from schemas import Action, MarketActionSpec
from schemas.settings import ExecutorSettings

QUOTE = (1_000_000_000, 100.0, 5.0, 100.1, 4.0)


def action(i: int, side: str = "long", size: float = 0.1, symbol: str = "BTC/USDT") -> Action:
    return Action(group_id=f"g{i}", candidate_index=0, group_size=1, policy_version=0, seed=0, prompt_id="p",
                  symbol=symbol, prompt="M", completion=f"{side} {size} h5",
                  parsed=MarketActionSpec(side=side, size=size, horizon_s=5.0))


def cfg(**kw) -> ExecutorSettings:
    base = dict(max_notional=100.0, max_position=1000.0, max_orders_per_minute=1000)
    base.update(kw)
    return ExecutorSettings(**base)


def test_paper_fills_at_the_touch(tmp_path):
    ex = PaperExecutor(cfg(), KillSwitch(tmp_path / "KILL"))
    buy = asyncio.run(ex.execute(action(1, "long", 0.5), QUOTE))
    sell = asyncio.run(ex.execute(action(2, "short", 0.5), QUOTE))
    assert (buy.price, buy.notional) == (100.1, 50.0) and sell.price == 100.0
    assert asyncio.run(ex.execute(action(3, "flat", 0.0), QUOTE)) is None


def test_hard_limits(tmp_path):
    ex = PaperExecutor(cfg(max_position=150.0, max_orders_per_minute=3), KillSwitch(tmp_path / "KILL"))
    assert asyncio.run(ex.execute(action(1, size=1.0), QUOTE)) is not None  # +100
    assert asyncio.run(ex.execute(action(2, size=1.0), QUOTE)) is None  # +200 > 150
    assert "max_position" in ex.refused[-1][1]
    assert asyncio.run(ex.execute(action(3, "short", 1.0), QUOTE)) is not None  # back to 0
    assert asyncio.run(ex.execute(action(4, size=0.1), QUOTE)) is not None  # third order this minute
    assert asyncio.run(ex.execute(action(5, size=0.1), QUOTE)) is None
    assert "orders in the last minute" in ex.refused[-1][1]
    small = PaperExecutor(cfg(max_notional=10.0), KillSwitch(tmp_path / "KILL2"))
    assert asyncio.run(small.execute(action(6, size=1.0), QUOTE)) is not None  # size scales max_notional
    assert small.gate.check(("", "BTC/USDT"), 11.0) is not None


def test_positions_close_at_their_horizon(tmp_path):
    ex = PaperExecutor(cfg(max_position=100.0), KillSwitch(tmp_path / "KILL"))
    assert asyncio.run(ex.execute(action(1, size=1.0), QUOTE)) is not None
    assert asyncio.run(ex.execute(action(2, size=1.0), QUOTE)) is None
    ex.on_market_time("", "BTC/USDT", QUOTE[0] + 5_000_000_000)
    assert asyncio.run(ex.execute(action(3, size=1.0), QUOTE)) is not None


def test_paper_positions_key_by_exchange_and_symbol(tmp_path):
    ex = PaperExecutor(cfg(max_position=100.0), KillSwitch(tmp_path / "KILL"))
    on = lambda i, venue: action(i, size=1.0).model_copy(update={"exchange": venue})  # noqa: E731
    assert asyncio.run(ex.execute(on(1, "binance"), QUOTE)) is not None
    assert asyncio.run(ex.execute(on(2, "okx"), QUOTE)) is not None  # another venue: its own position
    ex.on_market_time("okx", "BTC/USDT", QUOTE[0] + 5_000_000_000)  # closes okx's only
    assert ex.gate.positions == {("binance", "BTC/USDT"): 100.0, ("okx", "BTC/USDT"): 0.0}


def test_paper_fills_and_refusals_are_bounded(tmp_path):
    ex = PaperExecutor(cfg(max_position=1e12, keep_recent=5), KillSwitch(tmp_path / "KILL"))
    for i in range(30):
        asyncio.run(ex.execute(action(i, size=0.01), QUOTE))
    ex.gate.kill.engage("test")
    for i in range(30, 50):
        asyncio.run(ex.execute(action(i, size=0.01), QUOTE))
    assert (ex.fills_total, ex.refused_total) == (30, 20)
    assert [f.group_id for f in ex.fills] == [f"g{i}" for i in range(25, 30)]
    assert [g for g, _ in ex.refused] == [f"g{i}" for i in range(45, 50)]


async def _orders_until_killed(ex: PaperExecutor, engage) -> tuple[float, float | None, int]:
    """Submit an order every 20 ms; engage the switch part-way; return (engaged at, first fill
    after that or None, fills after)."""
    fills_after = 0
    engaged_at = None
    first_after = None
    for i in range(60):
        if i == 20:
            await engage()
            engaged_at = time.monotonic()
        fill = await ex.execute(action(i, size=0.01), QUOTE)
        if engaged_at is not None and fill is not None:
            fills_after += 1
            first_after = first_after or time.monotonic()
        await asyncio.sleep(0.02)  # order cadence of the scenario, not synchronisation
    return engaged_at, first_after, fills_after


TOKEN = "executor-test-admin-token"


def test_kill_switch_over_http_stops_orders_at_once(tmp_path):
    kill = KillSwitch(tmp_path / "KILL")
    ex = PaperExecutor(cfg(), kill)

    async def go():
        server = HttpServer("127.0.0.1", 0, health=lambda: {"ok": True}, ready=None, kill_switch=kill,
                            snapshot=None, admin_token=TOKEN)
        port = await server.start()

        async def engage():
            def post():
                req = urllib.request.Request(f"http://127.0.0.1:{port}/kill", method="POST", data=b"{}",
                                             headers={"Authorization": f"Bearer {TOKEN}",
                                                      "Content-Type": "application/json"})
                return json.loads(urllib.request.urlopen(req, timeout=5).read())
            body = await asyncio.to_thread(post)
            assert body["engaged"] is True

        try:
            return await _orders_until_killed(ex, engage)
        finally:
            await server.stop()

    _, _, fills_after = asyncio.run(go())
    assert len(ex.fills) == 20 and fills_after == 0
    assert all("kill switch" in r for _, r in ex.refused) and len(ex.refused) == 40


def test_kill_switch_flag_file(tmp_path):
    flag = tmp_path / "KILL"
    kill = KillSwitch(flag)
    ex = PaperExecutor(cfg(), kill)

    async def engage():
        flag.write_text("stop\n")

    _, _, fills_after = asyncio.run(_orders_until_killed(ex, engage))
    assert fills_after == 0 and len(ex.fills) == 20
    assert "flag file" in kill.reason
    kill.release()
    assert not flag.exists() and asyncio.run(ex.execute(action(99, size=0.01), QUOTE)) is not None


@pytest.mark.parametrize("env,ack", [(None, False), ("1", False), (None, True), ("0", True)])
def test_live_executor_refuses_without_both_switches(monkeypatch, tmp_path, env, ack):
    if env is None:
        monkeypatch.delenv("EIGENLOOP_LIVE_TRADING", raising=False)
    else:
        monkeypatch.setenv("EIGENLOOP_LIVE_TRADING", env)
    with pytest.raises(LiveTradingRefused) as e:
        LiveExecutor.create(cfg(), KillSwitch(tmp_path / "KILL"), {}, acknowledged=ack)
    assert "live trading refused" in str(e.value)


class RecordingExchange:
    """Stands in for a ccxt exchange at the create_order boundary only: this test is about the
    gate in front of it, and no exchange can be reached from here."""

    def __init__(self):
        self.orders = []

    async def create_order(self, symbol, type_, side, amount, price=None, params=None):
        self.orders.append((symbol, type_, side, amount))
        return {"id": str(len(self.orders))}


def test_live_executor_with_both_switches_goes_through_the_gate(monkeypatch, tmp_path):
    monkeypatch.setenv("EIGENLOOP_LIVE_TRADING", "1")
    exchange = RecordingExchange()
    kill = KillSwitch(tmp_path / "KILL")
    ex = LiveExecutor.create(cfg(max_orders_per_minute=2), kill, {"": LiveVenue("", exchange)}, acknowledged=True)
    assert asyncio.run(ex.execute(action(1, size=0.5), QUOTE)) == {"id": "1"}
    assert exchange.orders == [("BTC/USDT", "market", "buy", 50.0 / 100.1)]
    kill.engage("test")
    assert asyncio.run(ex.execute(action(2, size=0.5), QUOTE)) is None
    assert len(exchange.orders) == 1


def test_cli_refuses_live_trading_without_both_switches(tmp_path):
    import os
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "eigenloop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
    env.update(EIGENLOOP_DATA_DIR=str(tmp_path), EIGENLOOP_EXECUTOR__MODE="live", EIGENLOOP_KAFKA__BOOTSTRAP="127.0.0.1:1")
    out = subprocess.run([exe, "daemon"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "live trading refused: missing EIGENLOOP_LIVE_TRADING=1 and --i-understand-live-trading" in out.stderr
