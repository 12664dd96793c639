"""Hand-computed paper fills: every expected number is written out from the fill rules."""

from __future__ import annotations

import math

import pytest

from schemas import Action, MarketActionSpec, SocialActionSpec
from schemas.settings import RewardConfig
from streams.rewards import BookPath, paper_fill, score_action, social_reward, to_outcome

S = 1_000_000_000  # ns per second
MS = 1_000_000

# t=0 quote, a small move inside the 100 ms latency, a rally at 1 s, the horizon at 2 s
RALLY = BookPath([
    (0, 100.00, 1.0, 100.02, 1.0),
    (50 * MS, 100.01, 1.0, 100.03, 2.0),
    (1 * S, 100.20, 1.0, 100.22, 1.0),
    (3 * S, 90.00, 1.0, 90.02, 1.0),  # after the horizon: must not matter
])


def test_winning_long_with_fees_and_fixed_slippage():
    cfg = RewardConfig(latency_ms=100, fee_bps=4.5, slippage_model="fixed", slippage_bps=1.0)
    r = paper_fill(MarketActionSpec(side="long", size=0.5, horizon_s=2.0), 0, RALLY, cfg)
    # buys the ask prevailing at 100 ms (100.03), sells the bid prevailing at 2 s (100.20)
    gross = (100.20 - 100.03) / 100.03 * 1e4  # 16.995 bps
    assert (r.entry_price, r.exit_price, r.exit_reason) == (100.03, 100.20, "horizon")
    assert r.fees_bps == 9.0 and r.slippage_bps == 2.0
    assert r.pnl_bps == pytest.approx(gross - 9.0 - 2.0, abs=1e-12)
    assert r.reward == pytest.approx(0.5 * (gross - 11.0), abs=1e-12)
    assert r.reward > 0 and r.valid


def test_losing_short_with_fees_and_spread_slippage():
    cfg = RewardConfig(latency_ms=100, fee_bps=2.0, slippage_model="spread", slippage_bps=0.5)
    r = paper_fill(MarketActionSpec(side="short", size=1.0, horizon_s=2.0), 0, RALLY, cfg)
    # sells the bid at 100 ms (100.01), buys back the ask at 2 s (100.22)
    gross = (100.01 - 100.22) / 100.01 * 1e4  # -20.998 bps
    slip_in = 0.5 * 0.02 / 100.02 * 1e4  # half the entry spread, in bps of the mid
    slip_out = 0.5 * 0.02 / 100.21 * 1e4
    assert (r.entry_price, r.exit_price) == (100.01, 100.22)
    assert r.slippage_bps == pytest.approx(slip_in + slip_out, abs=1e-12)
    assert r.reward == pytest.approx(gross - 4.0 - slip_in - slip_out, abs=1e-12)
    assert r.reward < 0


def test_stop_hit_exits_at_the_touch_of_the_triggering_update():
    book = BookPath([
        (0, 100.00, 1, 100.02, 1),
        (500 * MS, 99.97, 1, 99.99, 1),  # mid 99.98: 3 bps against, under the stop
        (800 * MS, 99.93, 1, 99.95, 1),  # mid 99.94: 7 bps against -> stop
        (1500 * MS, 101.0, 1, 101.02, 1),  # a rally the stopped position never sees
    ])
    cfg = RewardConfig(latency_ms=0, fee_bps=0.0, slippage_model="none")
    r = paper_fill(MarketActionSpec(side="long", size=1.0, horizon_s=2.0, stop_bps=5.0), 0, book, cfg)
    assert r.exit_reason == "stop" and r.exit_ts_ns == 800 * MS
    assert (r.entry_price, r.exit_price) == (100.02, 99.93)
    assert r.reward == pytest.approx((99.93 - 100.02) / 100.02 * 1e4, abs=1e-12)
    assert r.drawdown_bps == pytest.approx((100.01 - 99.94) / 100.01 * 1e4, abs=1e-9)
    # same action without a stop rides the rally
    r2 = paper_fill(MarketActionSpec(side="long", size=1.0, horizon_s=2.0), 0, book, cfg)
    assert r2.exit_reason == "horizon" and r2.exit_price == 101.0 and r2.reward > 0


def test_risk_adjusted_reward_uses_realised_vol_and_drawdown():
    book = BookPath([(0, 99.0, 1, 101.0, 1), (1 * S, 98.0, 1, 100.0, 1), (2 * S, 101.0, 1, 103.0, 1)])
    cfg = RewardConfig(latency_ms=0, fee_bps=0.0, slippage_model="none", kind="risk_adjusted",
                       vol_floor_bps=1.0, drawdown_penalty=0.5, min_reward=-1e6, max_reward=1e6)
    r = paper_fill(MarketActionSpec(side="long", size=1.0, horizon_s=2.0), 0, book, cfg)
    pnl = (101.0 - 101.0) / 101.0 * 1e4  # buys 101 ask, sells 101 bid: 0
    vol = math.sqrt(math.log(99 / 100) ** 2 + math.log(102 / 99) ** 2) * 1e4
    mae = (100 - 99) / 100 * 1e4  # mid fell from 100 to 99
    assert r.realised_vol_bps == pytest.approx(vol, abs=1e-9)
    assert r.drawdown_bps == pytest.approx(mae, abs=1e-12)
    assert r.reward == pytest.approx(pnl / vol - 0.5 * mae, abs=1e-9)


def test_flat_is_zero_without_fees_and_clipping_applies():
    cfg = RewardConfig(fee_bps=10.0, min_reward=-5.0, max_reward=5.0)
    assert paper_fill(MarketActionSpec(side="flat", size=1.0, horizon_s=1), 0, RALLY, cfg).reward == 0.0
    r = paper_fill(MarketActionSpec(side="short", size=1.0, horizon_s=2.0), 0, RALLY, cfg)
    assert r.reward == -5.0 and r.pnl_bps < -5.0


def test_no_quote_before_entry_is_no_data_not_a_penalty():
    r = paper_fill(MarketActionSpec(side="long", size=1.0, horizon_s=1), -S, RALLY, RewardConfig())
    assert (r.reward, r.exit_reason, r.valid) == (0.0, "no_data", True)


def _action(**kw) -> Action:
    base = dict(group_id="g1", candidate_index=0, group_size=2, policy_version=3, seed=1,
                prompt_id="p1", symbol="BTC/USDT", exchange="binance", prompt="p", completion="c",
                ts_event=0)
    base.update(kw)
    return Action(**base)


def test_invalid_action_gets_min_reward_and_keeps_the_reason():
    cfg = RewardConfig(min_reward=-7.0)
    a = _action(parsed=None, invalid_reason="unparseable: 'buy the dip'")
    r = score_action(a, cfg, RALLY)
    assert (r.reward, r.valid, r.exit_reason, r.reason) == (-7.0, False, "invalid", "unparseable: 'buy the dip'")
    o = to_outcome(a, r)
    assert (o.reward, o.valid, o.reason, o.horizon_end_ns) == (-7.0, False, "unparseable: 'buy the dip'", 0)
    # a social spec on a market task is invalid too
    bad = _action(parsed=SocialActionSpec(pick=0, horizon_s=1))
    assert score_action(bad, cfg, RALLY).reason == "a social action on a market task"


def test_outcome_ids_are_deterministic():
    a = _action(parsed=MarketActionSpec(side="long", size=1.0, horizon_s=2.0))
    cfg = RewardConfig()
    o1, o2 = to_outcome(a, score_action(a, cfg, RALLY)), to_outcome(a, score_action(a, cfg, RALLY))
    assert o1.event_id == o2.event_id and o1.horizon_end_ns == 2 * S and o1 == o2.model_copy(
        update={"ts_ingest": o1.ts_ingest})


def test_social_reward_normalised_engagement():
    cfg = RewardConfig(social_like_weight=1.0, social_repost_weight=2.0)
    choices = ["at://a", "at://b", "at://c"]
    eng = [(1 * S, "like", "at://a"), (2 * S, "repost", "at://b"), (2 * S, "like", "at://b"),
           (3 * S, "like", "at://a"), (20 * S, "repost", "at://a"),  # after the horizon
           (0, "repost", "at://c")]  # at t0: not within (t0, t0 + horizon]
    scores = {0: 2.0, 1: 3.0, 2: 0.0}
    for pick, score in scores.items():
        r = social_reward(SocialActionSpec(pick=pick, horizon_s=10), choices, eng, 0, cfg)
        assert r.reward == pytest.approx(score / 3.0) and r.engagement == score
    assert social_reward(SocialActionSpec(pick=3, horizon_s=1), choices, eng, 0, cfg).valid is False
    assert social_reward(SocialActionSpec(pick=0, horizon_s=0.5), choices, eng, 0, cfg).reward == 0.0
