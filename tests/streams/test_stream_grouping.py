"""Group assembly and advantages: hand-computed cases."""

from __future__ import annotations

import math

import pytest

from schemas import Action, MarketActionSpec, event_id_ms
from schemas.learn import rewards_have_signal
from schemas.settings import GroupConfig, RewardConfig
from streams.grouping import NO_SIGNAL, all_in, close_group, compute_advantages, outcome_final, window_end_ns
from streams.rewards import invalid_result, to_outcome
from streams.rewards import RewardResult


def _actions(g: int, size: int | None = None) -> list[Action]:
    return [Action(group_id="g", candidate_index=i, group_size=size or g, policy_version=1, seed=i,
                   prompt_id="p", symbol="BTC/USDT", prompt="the prompt", completion=f"c{i}",
                   parsed=MarketActionSpec(side="long", size=1.0, horizon_s=1.0), ts_event=0)
            for i in range(g)]


def _outcomes(actions: list[Action], rewards: list[float]) -> dict:
    return {a.candidate_index: to_outcome(a, RewardResult(reward=r)) for a, r in zip(actions, rewards)}


def test_batch_versus_group_scaling():
    groups = [[1.0, 3.0], [0.0, 10.0]]
    # group: each group by its own sample std; [1,3] -> std sqrt(2), [0,10] -> std sqrt(50)
    g = compute_advantages(groups, "group")
    assert g[0] == pytest.approx([-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4)], abs=1e-12)
    assert g[1] == pytest.approx([-5 / (math.sqrt(50) + 1e-4), 5 / (math.sqrt(50) + 1e-4)], abs=1e-12)
    # batch: group means, one std over all four rewards: mean 3.5, squares 6.25+0.25+12.25+42.25 = 61
    std = math.sqrt(61 / 3)
    b = compute_advantages(groups, "batch")
    assert b == [pytest.approx([-1 / (std + 1e-4), 1 / (std + 1e-4)], abs=1e-12),
                 pytest.approx([-5 / (std + 1e-4), 5 / (std + 1e-4)], abs=1e-12)]
    assert compute_advantages(groups, "none") == [[-1.0, 1.0], [-5.0, 5.0]]
    with pytest.raises(ValueError, match="scale_rewards='max'"):
        compute_advantages(groups, "max")  # type: ignore[arg-type]


def test_zero_spread_group_is_emitted_as_skipped():
    acts = _actions(4)
    grp = close_group(acts, _outcomes(acts, [2.5] * 4), GroupConfig(group_size=4), close_reason="all_in",
                      window_end=5)
    assert (grp.status, grp.skip_reason) == ("skipped", NO_SIGNAL)
    assert grp.rewards == [2.5] * 4 and grp.advantages == [0.0] * 4 and grp.candidate_indices == [0, 1, 2, 3]


@pytest.mark.parametrize("spread, signal", [(1e-8, False), (3e-8, True)])
def test_the_stream_skips_exactly_the_groups_without_signal_for_the_learner(spread, signal):
    # sample stds 5.8e-9 and 1.7e-8 sit either side of TRL's isclose(std, 0) atol
    acts = _actions(3)
    grp = close_group(acts, _outcomes(acts, [0.0, spread, 0.0]), GroupConfig(group_size=3), close_reason="all_in",
                      window_end=5)
    assert rewards_have_signal(grp.rewards) is signal and grp.has_signal is signal
    assert (grp.status == "skipped") is not signal


def test_complete_group_and_deterministic_id():
    acts = _actions(3)
    cfg = GroupConfig(group_size=3, scale_rewards="group")
    out = _outcomes(acts, [1.0, 2.0, 6.0])
    grp = close_group(list(reversed(acts)), out, cfg, close_reason="all_in", window_end=7_000_000_000)
    assert grp.status == "complete" and grp.completions == ["c0", "c1", "c2"]
    assert grp.advantages == pytest.approx([(-2) / (math.sqrt(7) + 1e-4), -1 / (math.sqrt(7) + 1e-4),
                                            3 / (math.sqrt(7) + 1e-4)], abs=1e-12)
    again = close_group(acts, out, cfg, close_reason="expired", window_end=7_000_000_000)
    assert again.event_id == grp.event_id and event_id_ms(grp.event_id) == 7000


@pytest.mark.parametrize("policy,got,status,reason", [
    ("keep", 3, "partial", None),
    ("keep", 1, "skipped", "partial 1/4 < min_partial 2"),
    ("drop", 3, "skipped", "partial 3/4 dropped"),
])
def test_partial_groups_follow_the_config(policy, got, status, reason):
    acts = _actions(4)[:got]
    cfg = GroupConfig(group_size=4, partial=policy, min_partial=2)
    grp = close_group(acts, _outcomes(acts, [float(i) for i in range(got)]), cfg, close_reason="expired",
                      window_end=1)
    assert (grp.status, grp.skip_reason, len(grp.rewards)) == (status, reason, got)


def test_invalid_candidates_count_with_min_reward():
    acts = _actions(2)
    out = {0: to_outcome(acts[0], invalid_result("bad", RewardConfig(min_reward=-50))),
           1: to_outcome(acts[1], RewardResult(reward=0.0))}
    grp = close_group(acts, out, GroupConfig(group_size=2), close_reason="all_in", window_end=1)
    assert grp.rewards == [-50.0, 0.0] and grp.advantages[0] < 0 < grp.advantages[1]


def test_window_end():
    assert window_end_ns(10, [15, 30], 2.0) == 30 + 2_000_000_000
    assert window_end_ns(10, [], 0.5) == 10 + 500_000_000


def test_doctests_of_the_pure_modules():
    import doctest

    import streams.grouping
    import streams.rewards

    for mod in (streams.rewards, streams.grouping):
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


def test_an_outcome_is_final_only_after_a_record_past_its_horizon():
    # a record stamped at the horizon itself may be followed by another with the same stamp
    assert not outcome_final(1_000, 1_000) and outcome_final(1_000, 1_001)
    assert not all_in([1_000, 2_000], 1_500) and all_in([1_000, 2_000], 2_001)
