"""The live executor through real ccxt against local order desks (tests/daemon/order_desk.py):
routing by venue, retries without double fills, refusals, restarts, horizon closes."""

from __future__ import annotations

import asyncio

import pytest

from daemon.cli.daemon import live_venues_from_env
from daemon.service.executors import KillSwitch
from daemon.service.live_executor import LiveExecutor, client_order_id
from daemon.service.risk_state import risk_state_path
from schemas import Action, MarketActionSpec
from schemas.settings import Settings
from tests.daemon.order_desk import API_KEY, SECRET, OrderDesk

QUOTE = (1_000_000_000, 100.0, 5.0, 100.0, 4.0)
SPOT, PERP = "BTC/USDT", "BTC/USDT:USDT"


def action(i: int, exchange: str, symbol: str, side: str = "long", size: float = 0.5) -> Action:
    return Action(group_id=f"g{i}", candidate_index=0, group_size=1, policy_version=0, seed=0, prompt_id="p",
                  symbol=symbol, exchange=exchange, prompt="M", completion=f"{side} {size} h5",
                  parsed=MarketActionSpec(side=side, size=size, horizon_s=5.0))


def settings(tmp_path, spot: OrderDesk, perp: OrderDesk, **executor) -> Settings:
    ex = dict(mode="live", max_notional=100.0, max_position=1000.0, max_orders_per_minute=1000,
              order_timeout_s=0.5, order_retries=3, order_backoff_s=0.01)
    ex.update(executor)
    return Settings(data_dir=tmp_path, executor=ex, sources={"exchanges": [
        {"name": "binance", "symbols": [SPOT], "rest_url": spot.url},
        {"name": "binanceusdm", "symbols": [PERP], "rest_url": perp.url}]})


@pytest.fixture
def live_env(monkeypatch):
    monkeypatch.setenv("EIGENLOOP_LIVE_TRADING", "1")
    for name in ("BINANCE", "BINANCEUSDM"):
        monkeypatch.setenv(f"EIGENLOOP_EXCHANGE_{name}_API_KEY", API_KEY)
        monkeypatch.setenv(f"EIGENLOOP_EXCHANGE_{name}_SECRET", SECRET)


async def started(s: Settings) -> LiveExecutor:
    """As the daemon builds it: venues from settings + env, risk state under data_dir."""
    ex = LiveExecutor.create(s.executor, KillSwitch(s.data_dir / "KILL"), live_venues_from_env(s),
                             acknowledged=True, state_file=risk_state_path(s))
    await ex.start()
    return ex


def run(coro_fn):
    async def go():
        async with OrderDesk() as spot, OrderDesk() as perp:
            await coro_fn(spot, perp)
    asyncio.run(go())


def test_orders_go_to_the_venue_the_action_names(tmp_path, live_env):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        ex = await started(settings(tmp_path, spot, perp))
        try:
            assert await ex.execute(action(1, "binanceusdm", PERP), QUOTE) is not None
            assert await ex.execute(action(2, "binance", SPOT, "short"), QUOTE) is not None
            assert await ex.execute(action(3, "kraken", SPOT), QUOTE) is None
        finally:
            await ex.close()
        assert [(o.market, o.side, o.client_id) for o in perp.orders] == [("usdm", "BUY", client_order_id("g1"))]
        assert [(o.market, o.side, o.client_id) for o in spot.orders] == [("spot", "SELL", client_order_id("g2"))]
        assert ex.refused[-1][0] == "g3" and "unknown venue 'kraken'" in ex.refused[-1][1]
        assert ex.gate.positions == {("binanceusdm", PERP): 50.0, ("binance", SPOT): -50.0}

    run(scenario)


@pytest.mark.parametrize("fault", ["http500", "hang_before", "hang_after"])
def test_network_errors_are_retried_without_a_double_fill(tmp_path, live_env, fault):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        ex = await started(settings(tmp_path, spot, perp))
        try:
            perp.fail_next(fault, times=2)
            order = await ex.execute(action(1, "binanceusdm", PERP), QUOTE)
            # the executor is still usable afterwards
            assert await ex.execute(action(2, "binanceusdm", PERP), QUOTE) is not None
        finally:
            await ex.close()
        assert order is not None and order["clientOrderId"] == client_order_id("g1")
        # hang_after placed the order on the first try: the retry found it instead of re-sending
        assert [o.client_id for o in perp.orders] == [client_order_id("g1"), client_order_id("g2")]
        assert perp.positions["BTCUSDT"] == pytest.approx(1.0)
        assert not ex.refused and not ex.unknown

    run(scenario)


def test_exchange_error_is_refused_recorded_and_not_retried(tmp_path, live_env):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        ex = await started(settings(tmp_path, spot, perp))
        try:
            spot.fail_next("insufficient")
            assert await ex.execute(action(1, "binance", SPOT), QUOTE) is None
        finally:
            await ex.close()
        assert spot.order_posts() == 1 and spot.orders == []
        assert ex.refused[-1][0] == "g1" and "insufficient balance" in ex.refused[-1][1]
        assert ex.gate.positions.get(("binance", SPOT), 0.0) == 0.0 and not ex.open

    run(scenario)


def test_order_outcome_unknown_after_retries_counts_as_held(tmp_path, live_env):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        ex = await started(settings(tmp_path, spot, perp, order_retries=1))
        try:
            perp.fail_next("http500", times=5)
            assert await ex.execute(action(1, "binanceusdm", PERP), QUOTE) is None
        finally:
            await ex.close()
        assert perp.orders == [] and ex.unknown[-1][0] == "g1"
        assert ex.gate.positions[("binanceusdm", PERP)] == 50.0  # the limits never undercount exposure

    run(scenario)


def test_restart_reconciles_positions_and_keeps_the_rate_window(tmp_path, live_env):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        s = settings(tmp_path, spot, perp, max_orders_per_minute=2, max_position=100.0)
        first = await started(s)
        try:
            assert await first.execute(action(1, "binanceusdm", PERP), QUOTE) is not None
            assert await first.execute(action(2, "binance", SPOT), QUOTE) is not None
            assert await first.execute(action(3, "binance", SPOT, "short"), QUOTE) is None
            assert "orders in the last minute" in first.refused[-1][1]
        finally:
            await first.close()
        perp.positions["BTCUSDT"] = 0.8  # moved on the venue while the daemon was down
        second = await started(s)  # a new process: fresh clients, state from disk and venues
        try:
            assert second.gate.positions == {("binanceusdm", PERP): pytest.approx(80.0),
                                             ("binance", SPOT): pytest.approx(50.0)}
            assert await second.execute(action(4, "binance", SPOT, "short"), QUOTE) is None
            assert "orders in the last minute" in second.refused[-1][1]
            assert [p.group_id for p in second.open] == ["g1", "g2"]
        finally:
            await second.close()
        assert len(spot.orders) == 1 and len(perp.orders) == 1

    run(scenario)


def test_reconciled_position_limits_new_orders(tmp_path, live_env):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        perp.positions["BTCUSDT"] = 0.9  # held before this process started: 90 of max_position 100
        ex = await started(settings(tmp_path, spot, perp, max_position=100.0))
        try:
            assert await ex.execute(action(1, "binanceusdm", PERP), QUOTE) is None
            assert "max_position" in ex.refused[-1][1]
            assert await ex.execute(action(2, "binanceusdm", PERP, "short"), QUOTE) is not None
        finally:
            await ex.close()

    run(scenario)


def test_horizon_close_sends_the_reducing_order(tmp_path, live_env):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        ex = await started(settings(tmp_path, spot, perp))
        try:
            assert await ex.execute(action(1, "binanceusdm", PERP), QUOTE) is not None
            assert await ex.execute(action(2, "binance", SPOT), QUOTE) is not None
            horizon = QUOTE[0] + 5_000_000_000
            ex.on_market_time("binanceusdm", PERP, horizon - 1)
            ex.on_market_time("binance", PERP, horizon)  # another venue's market time: not this position
            await ex.settle()
            assert len(perp.orders) == 1
            perp.fail_next("hang_after")  # the close reaches the venue, the answer does not
            ex.on_market_time("binanceusdm", PERP, horizon)
            await ex.settle()
        finally:
            await ex.close()
        close = perp.orders[-1]
        assert len(perp.orders) == 2 and (close.side, close.reduce_only) == ("SELL", True)
        assert close.client_id == client_order_id("g1", "close")
        assert perp.positions["BTCUSDT"] == pytest.approx(0.0)
        assert ex.gate.positions[("binanceusdm", PERP)] == pytest.approx(0.0)
        assert [p.group_id for p in ex.open] == ["g2"] and len(spot.orders) == 1

    run(scenario)


def test_rejected_close_is_recorded_and_the_position_stays_counted(tmp_path, live_env):
    async def scenario(spot: OrderDesk, perp: OrderDesk):
        ex = await started(settings(tmp_path, spot, perp))
        try:
            assert await ex.execute(action(1, "binance", SPOT), QUOTE) is not None
            spot.fail_next("insufficient")
            ex.on_market_time("binance", SPOT, QUOTE[0] + 5_000_000_000)
            await ex.settle()
        finally:
            await ex.close()
        assert spot.order_posts() == 2 and len(spot.orders) == 1
        assert "close rejected" in ex.refused[-1][1] and not ex.open
        assert ex.gate.positions[("binance", SPOT)] == 50.0

    run(scenario)
