"""The prompt/action grammar: compact prompts, round-trips, and a parser that never raises."""

import random

import pytest
import torch

from learners.grammar import (Invalid, format_market_prompt, format_social_prompt, market_scale_features, parse_action,
                              random_market_example, random_market_features, random_social_example)
from schemas import MarketActionSpec, SocialActionSpec
from schemas.market import MarketFeatures


def test_market_prompt_is_compact_and_ordered():
    p = format_market_prompt("BTCUSDT", {"volume": 1234.0, "ret_10s": -12.4, "ret_1s": 3.2,
                                         "spread_bps": 1.23, "imbalance": 0.351, "social_posts": 4})
    # non-directional first, imbalance last (a fixed distance from the completion)
    assert p == "M BTCUSDT sp=1.23 v=1.23k sn=4 r10=-12 r1=+3 im=+0.35>"
    assert format_social_prompt(["gm | all", "to the\nmoon"], 60) == "S h60 0:gm all|1:to the moon>"


def test_a_market_features_record_writes_the_same_prompt_as_its_names():
    f = MarketFeatures(ret_1s=3.2, ret_10s=-12.4, spread_bps=1.23, imbalance=0.351, volume=1234.0, social_posts=4)
    assert format_market_prompt("BTCUSDT", f) == format_market_prompt("BTCUSDT", f.as_dict())
    assert format_market_prompt("BTCUSDT", f) == "M BTCUSDT sp=1.23 v=1.23k sn=4 r60=0 r10=-12 r1=+3 im=+0.35>"
    assert "social_likes" not in f.as_dict()  # not measured: not shown


def test_synthetic_markets_are_market_features():
    rng = random.Random(0)
    for draw in (random_market_features, market_scale_features):
        f = draw(rng)
        assert isinstance(f, MarketFeatures) and -1 <= f.imbalance <= 1 and f.spread_bps > 0


def test_zero_has_no_sign():
    # "+0" would share its sign byte with every rise: a flat market must not read as "up"
    p = format_market_prompt("BTCUSDT", {"ret_1s": 0.4, "ret_10s": -0.4, "ret_60s": 2.0, "imbalance": -0.004})
    assert p == "M BTCUSDT r60=+2 r10=0 r1=0 im=0.00>"


def test_generated_actions_round_trip():
    rng = random.Random(0)
    for _ in range(200):
        _, a = random_market_example(rng)
        assert isinstance(parse_action(a, "market"), MarketActionSpec), a
        _, s = random_social_example(rng)
        assert isinstance(parse_action(s, "social", n_choices=3), SocialActionSpec), s
    spec = parse_action(" short 0.25 h30 s20\n")
    assert (spec.side, spec.size, spec.horizon_s, spec.stop_bps) == ("short", 0.25, 30.0, 20.0)
    assert parse_action("flat 0.7 h5").size == 0.0


@pytest.mark.parametrize("text, task, fragment", [
    ("", "market", "empty"), ("buy 1 h5", "market", "unknown side"), ("long 2 h5", "market", "outside"),
    ("long x h5", "market", "not a number"), ("long 1 5", "market", "horizon"), ("long 1 h5 s-3", "market", "stop"),
    ("long 1 h5 s3 x", "market", "fields"), ("pick 4 h5", "social", "out of range"), ("pick -1 h5", "social", "index"),
    (None, "market", "not text"), ("long 1 h5", "weather", "unknown task"), ("long nan h5", "market", "outside"),
])
def test_malformed_completions_become_invalid_with_a_reason(text, task, fragment):
    out = parse_action(text, task, n_choices=3)
    assert isinstance(out, Invalid) and fragment in out.reason


def test_parser_never_raises_on_random_bytes():
    rng = random.Random(1)
    for _ in range(500):
        text = bytes(rng.randrange(256) for _ in range(rng.randrange(20))).decode("utf-8", "replace")
        parse_action(text, rng.choice(["market", "social"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_keeps_model_and_optimizer_on_device():
    from learners.core import LearnerConfig, build_state, sample, step
    from learners.model import ModelConfig
    from schemas import GRPOGroup

    state = build_state(LearnerConfig(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2),
                                      gen_len=12, sample_steps=12, device="cuda"))
    comps = sample(state, "M X>", n=4, seed=0)
    state, ups = step(state, GRPOGroup(group_id="g", symbol="X", policy_version=0, prompt="M X>", completions=comps,
                                       candidate_indices=[0, 1, 2, 3], rewards=[1, 0, 0, 0],
                                       advantages=[1.5, -0.5, -0.5, -0.5], group_size=4))
    assert len(ups) == 2 and all(p.is_cuda for p in state.model.parameters())
    assert all(v.is_cuda for o in state.optimizers for s in o.state.values() for k, v in s.items() if k != "step")

