"""The context window and the actor's schedule are per market: (exchange, symbol), not symbol.

Two venues quoting the same symbol at different prices, on clocks two years apart (the OKX
capture is from 2022, Binance's from 2024), must keep separate windows, features, quote paths,
schedules and decisions."""

from __future__ import annotations

import asyncio

from daemon.service.actor import Actor
from daemon.service.context import ContextWindow
from daemon.service.run_summary import RunLedger
from schemas import Action, BookTicker, GRPOGroup, MarketActionSpec, MarketTrade
from schemas.settings import ActorSettings, GroupConfig, RewardConfig

SYM = "BTC/USDT"
S = 1_000_000_000
T_BIN = 1_723_161_600 * S  # 2024-08-09
T_OKX = 1_652_459_225 * S  # 2022-05-13: years before Binance's clock


def quote(exchange: str, t: int, bid: float, ask: float, bq: float = 1.0, aq: float = 1.0) -> BookTicker:
    return BookTicker(exchange=exchange, symbol=SYM, bid_price=bid, bid_qty=bq, ask_price=ask, ask_qty=aq,
                      ts_event=t, key=SYM, source=f"{exchange}:spot")


def trade(exchange: str, t: int, price: float, qty: float, tid: str) -> MarketTrade:
    return MarketTrade(exchange=exchange, symbol=SYM, trade_id=tid, price=price, qty=qty, side="buy",
                       ts_event=t, key=SYM, source=f"{exchange}:spot")


def interleaved() -> list:
    """Binance around 61,000 and OKX around 30,000, one record of each per 0.5 s, in arrival order."""
    out = []
    for i in range(25):
        out.append(quote("binance", T_BIN + i * S // 2, 61_000.0 + i, 61_000.5 + i, bq=3.0, aq=1.0))
        out.append(quote("okx", T_OKX + i * S // 2, 30_000.0 - i, 30_001.0 - i, bq=1.0, aq=3.0))
        out.append(trade("binance", T_BIN + i * S // 2 + 1, 61_000.0 + i, 0.5, f"b{i}"))
        out.append(trade("okx", T_OKX + i * S // 2 + 1, 30_000.0 - i, 2.0, f"o{i}"))
    return out


def test_two_venues_with_one_symbol_keep_separate_windows_features_and_quotes():
    ctx = ContextWindow()
    for ev in interleaved():
        ctx.observe(ev)
    assert set(ctx.markets) == {("binance", SYM), ("okx", SYM)}
    # every quote of both venues was kept: the older OKX clock did not make OKX's quotes "late"
    assert [q[1] for q in ctx.markets[("okx", SYM)].quotes] == [30_000.0 - i for i in range(25)]
    assert [q[1] for q in ctx.markets[("binance", SYM)].quotes] == [61_000.0 + i for i in range(25)]
    assert ctx.last_quote("binance", SYM)[1:] == (61_024.0, 3.0, 61_024.5, 1.0)
    assert ctx.last_quote("okx", SYM)[1:] == (29_976.0, 1.0, 29_977.0, 3.0)
    assert ctx.last_quote("bybit", SYM) is None and ctx.features("bybit", SYM, T_BIN) is None

    fb = ctx.features("binance", SYM, T_BIN + 12 * S)
    fo = ctx.features("okx", SYM, T_OKX + 12 * S)
    assert fb.imbalance == 0.5 and fo.imbalance == -0.5
    assert fb.ret_10s > 0 > fo.ret_10s  # one venue rising, the other falling
    assert abs(fb.spread_bps - 0.5 / 61_024.25 * 1e4) < 1e-9
    assert abs(fo.spread_bps - 1.0 / 29_976.5 * 1e4) < 1e-9
    # volume over the last 10 s of each venue's own trades only
    assert abs(fb.volume - sum(0.5 * (61_000.0 + i) for i in range(4, 25))) < 1e-6
    assert abs(fo.volume - sum(2.0 * (30_000.0 - i) for i in range(4, 25))) < 1e-6
    # a venue's features at the other's clock: before its first quote, so none
    assert ctx.features("okx", SYM, T_OKX - S) is None

    path = ctx.quotes_between("okx", SYM, T_OKX + S, T_OKX + 2 * S)
    assert [q[0] for q in path] == [T_OKX + S, T_OKX + 3 * S // 2, T_OKX + 2 * S]
    assert all(q[1] < 31_000 for q in path)
    assert all(q[1] > 60_000 for q in ctx.quotes_between("binance", SYM, T_BIN, T_BIN + 5 * S))


class _Policy:
    """Stands in for the resident model: a fixed valid completion per sample."""

    async def sample(self, prompt, n, seed, temperature=None, top_p=None):
        return ["long 1 h5"] * n, 0


def test_actor_schedules_and_decides_per_market():
    ctx = ContextWindow()
    emitted: list = []

    async def emit(topic, ev):
        emitted.append((topic, ev))

    actor = Actor(_Policy(), ctx, emit, None, ActorSettings(cadence_s=2.0, horizon_s=5.0), GroupConfig(group_size=2),
                  run_key="test")
    due: dict[tuple[str, str], list[int]] = {}
    for ev in interleaved():
        ctx.observe(ev)
        actor.on_market_event(ev.exchange, ev.symbol, ev.ts_event)
        for ex in ("binance", "okx"):
            d = actor.take_due(ex, SYM)
            if d is not None:
                assert (d.exchange, d.symbol) == (ex, SYM)
                # the decision's context is its own venue's
                assert d.quote[1] > 60_000 if ex == "binance" else d.quote[1] < 31_000
                due.setdefault((ex, SYM), []).append(d.t0_ns)
                asyncio.run(actor.decide(d))
    # each venue on its own clock: first decision one cadence after its first record, then every 2 s
    assert due[("binance", SYM)] == [T_BIN + k * 2 * S for k in range(1, 7)]
    assert due[("okx", SYM)] == [T_OKX + k * 2 * S for k in range(1, 7)]
    assert actor.skipped == 0
    actions = [ev for topic, ev in emitted if topic == "agent.actions"]
    assert len(actions) == 2 * 6 * 2
    by_group: dict[str, set] = {}
    for a in actions:
        by_group.setdefault(a.group_id, set()).add((a.exchange, a.symbol, a.ts_event >= T_BIN))
    # every group is one venue's: its actions carry that venue, at that venue's time
    assert all(len(v) == 1 for v in by_group.values())
    assert sorted(next(iter(v))[0] for v in by_group.values()) == ["binance"] * 6 + ["okx"] * 6
    assert all((a.exchange == "binance") == (a.ts_event >= T_BIN) for a in actions)


def test_run_ledger_scores_each_group_on_its_own_venue():
    ctx = ContextWindow()
    for ev in interleaved():
        ctx.observe(ev)
    ledger = RunLedger(ctx, RewardConfig(latency_ms=0.0, fee_bps=0.0, slippage_model="none"), horizon_s=5.0)
    actor_actions = []
    for ex, t0 in (("binance", T_BIN + 2 * S), ("okx", T_OKX + 2 * S)):
        a = Action(group_id=f"g-{ex}", candidate_index=0, group_size=1, policy_version=0, seed=0, prompt_id=f"g-{ex}",
                   symbol=SYM, exchange=ex, prompt="M", completion="long 1 h5",
                   parsed=MarketActionSpec(side="long", size=1.0, horizon_s=5.0), ts_event=t0, key=f"g-{ex}",
                   source="actor")
        actor_actions.append(a)
        ledger.opened([a])
    for a in actor_actions:
        ledger.applied(GRPOGroup(group_id=a.group_id, task="market", prompt_id=a.group_id, prompt="M", symbol=SYM,
                                 completions=[a.completion], candidate_indices=[0], rewards=[1.0], advantages=[0.0],
                                 group_size=1, policy_version=0, ts_event=a.ts_event, key=a.group_id, source="t"))
    rows = {r["exchange"]: r for r in ledger.rows}
    # a symbol-keyed window would hold one venue's book only, and the other group would go unscored
    assert set(rows) == {"binance", "okx"}
    assert rows["binance"]["t0_ns"] == T_BIN + 2 * S and rows["okx"]["t0_ns"] == T_OKX + 2 * S
    # the random baseline (mean of long, short, flat) pays each venue's own round-trip spread:
    # 0.5 on ~61,000 at Binance, 1.0 on ~30,000 at OKX (the drifts cancel between long and short)
    assert abs(rows["binance"]["random"] - (-1.0 / 61_009.25 * 1e4 / 3)) < 1e-3
    assert abs(rows["okx"]["random"] - (-2.0 / 29_991.5 * 1e4 / 3)) < 1e-3
