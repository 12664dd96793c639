"""The pure diversity metrics: action keys, entropies, divergence, group and window pooling."""

import math

import pytest

from learners.diversity import (action_key, distribution, entropy_bits, group_diversity, js_divergence, no_signal,
                                probe_distribution, probe_prompts, update_ratio, window_diversity)


def test_action_keys_bucket_sizes_and_horizons_and_reject_garbage():
    assert action_key("long 0.5 h30") == ("long", 0.5, 30.0)
    assert action_key("long 0.45 h50 s20") == ("long", 0.5, 60.0)  # nearest size; horizon on a log scale
    assert action_key("flat 1 h5") == ("flat", 0.0, 5.0)  # the parser zeroes a flat size
    assert action_key("short 1 h3") == ("short", 1.0, 5.0)
    assert action_key("pick 2 h60", "social") == ("pick", 2, 60.0)
    for junk in ("", "lon 1 h5", "long 2 h5", "long 1 x5", "long 0.5 h"):
        assert action_key(junk) is None


def test_entropy_in_bits():
    assert entropy_bits([]) == 0.0
    assert entropy_bits(["a"] * 7) == 0.0
    assert entropy_bits(["a", "b"]) == pytest.approx(1.0)
    assert entropy_bits(range(8)) == pytest.approx(3.0)


def test_js_divergence_is_bounded_symmetric_and_zero_on_equal():
    p = distribution(["a", "a", "b"])
    q = distribution(["b", "c"])
    assert js_divergence(p, p) == pytest.approx(0.0)
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    assert 0 < js_divergence(p, q) < 1
    assert js_divergence({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)  # disjoint supports: the maximum


def test_group_diversity():
    g = group_diversity(["long 1 h5", "long 1 h5", "short 0.5 h30", "garbage"], [1.0, 1.0, 0.0, 0.0])
    assert g.action_entropy == pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3))
    assert g.distinct_ratio == 0.75 and g.valid_share == 0.75 and g.reward_spread == 1.0 and not g.zero_spread
    same = group_diversity(["long 1 h5"] * 4, [0.5] * 4)
    assert same.action_entropy == 0 and same.distinct_ratio == 0.25 and same.zero_spread
    assert no_signal([1.0]) and no_signal([]) and not no_signal([0.0, 1e-3])


def test_window_pools_actions_across_groups():
    a = group_diversity(["long 1 h5"] * 4, [0.0] * 4)
    b = group_diversity(["short 1 h5"] * 4, [0.0, 1.0, 0.0, 0.0])
    w = window_diversity([a, b], [3, 5])
    assert w.action_entropy == pytest.approx(1.0)  # two actions, half each, although each group has one
    assert w.mean_group_entropy == 0.0 and w.zero_spread_share == 0.5
    assert (w.policy_version_min, w.policy_version_max, w.groups) == (3, 5, 2)
    assert w.as_dict()["distinct_actions"] == 2
    with pytest.raises(ValueError):
        window_diversity([], [])


def test_probe_set_is_fixed_for_a_seed():
    assert probe_prompts(5, seed=7) == probe_prompts(5, seed=7)
    assert probe_prompts(5, seed=7) != probe_prompts(5, seed=8)
    assert all(p.startswith("M ") and p.endswith(">") for p in probe_prompts(5))
    assert probe_distribution([None, ("long", 1.0, 5.0)]) == {"invalid": 0.5, ("long", 1.0, 5.0): 0.5}
    assert update_ratio(1.0, 4.0) == 0.25 and update_ratio(1.0, 0.0) == 0.0
