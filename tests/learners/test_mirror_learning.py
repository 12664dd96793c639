"""Mirror learning on the controlled market task (``learners.tasks``), at the market's noise level.

The learner runs with its defaults (the cpu preset's dynamics: exact trajectory likelihood,
mirror, Adam with a long second-moment memory, a small KL to the prior) on a tiny model
bootstrapped on the trading prior, and the exact probe reads what it learned:

- drift (short always wins, whatever the prompt): with the mirror, P(long) - P(short) stays at
  the bootstrap's; without it, the policy collapses onto short;
- signal (the side the imbalance points to wins): learned;
- noisy signal (that side wins only 56 % of groups, the share measured on the captures): learned.
"""

import random

import pytest
import torch

from learners import tasks
from learners.bootstrap import bootstrapped_state
from learners.core import LearnerConfig, sample, step
from learners.grammar import prior_pairs
from learners.model import ModelConfig
from learners.probe import imbalance_gap, imbalance_probe
from learners.snapshot import load_snapshot, save_snapshot

TINY = ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2)


@pytest.fixture(scope="module")
def prior_snapshot(tmp_path_factory):
    torch.set_num_threads(1)
    state, info = bootstrapped_state(LearnerConfig(model=TINY, device="cpu"), steps=1200, progress=False,
                                     pairs_fn=prior_pairs(), parse_prompts=None)
    path = tmp_path_factory.mktemp("prior") / "snap"
    save_snapshot(state, path, info)
    return path


def learn(state, rule: str, groups: int, seed: int = 0):
    rng, wins = random.Random(100 + seed), random.Random(200 + seed)
    for i in range(groups):
        prompt, im = tasks.prompt(rng)
        comps = sample(state, prompt, n=8, seed=1000 + 7919 * seed + i)
        r = tasks.rewards(comps, tasks.winner(rule, im, wins))
        state, _ = step(state, tasks.group(i, prompt, comps, r, state.policy_version))
    return state


def learner(path, **config):
    state = load_snapshot(path, device="cpu")
    state.config = LearnerConfig(**{"model": TINY, "device": "cpu", **config})
    return state


def train(path, rule: str, groups: int, **config) -> tuple[dict, dict]:
    """(bootstrap probe, final probe) after ``groups`` groups of ``rule`` with the learner defaults."""
    state = learner(path, **config)
    before = imbalance_probe(state)
    return before, imbalance_probe(learn(state, rule, groups))


def long_minus_short(probe: dict) -> list[float]:
    return [p["long"] - p["short"] for p in probe.values()]


@pytest.mark.slow
def test_drift_cannot_pay_with_the_mirror_and_collapses_without_it(prior_snapshot):
    before, mirrored = train(prior_snapshot, "drift", 150)
    _, plain = train(prior_snapshot, "drift", 150, mirror=False)
    print("L-S bootstrap", long_minus_short(before), "mirror", long_minus_short(mirrored),
          "no mirror", long_minus_short(plain))
    for b, m in zip(long_minus_short(before), long_minus_short(mirrored)):
        assert abs(m - b) < 0.15, (before, mirrored)
    assert all(x < -0.8 for x in long_minus_short(plain)), plain


@pytest.mark.slow
def test_the_imbalance_sign_is_learned_with_the_mirror(prior_snapshot):
    before, after = train(prior_snapshot, "signal", 300)
    print("gap", imbalance_gap(before), "->", imbalance_gap(after), after)
    assert abs(imbalance_gap(before)) < 0.05
    # not all the way to 2: once every candidate is right the group has no spread, and the KL
    # to the prior (which applies to such groups too) keeps the policy from freezing there; at
    # the default lr (5e-5) 300 groups take it to about 1 (0.99 measured); the issue asks 0.3
    assert imbalance_gap(after) > 0.8


@pytest.mark.slow
def test_a_56_percent_signal_is_learned(prior_snapshot):
    before, after = train(prior_snapshot, "noisy", 900)
    print("gap", imbalance_gap(before), "->", imbalance_gap(after), after)
    assert imbalance_gap(after) >= 0.3  # the probe target, here on a 56 % signal
    # and monotone in the signal: long more likely, short less likely, as the imbalance rises
    assert after["im=+0.8"]["long"] > after["im=-0.8"]["long"]
    assert after["im=-0.8"]["short"] > after["im=+0.8"]["short"]


@pytest.mark.slow
def test_a_policy_in_a_corner_is_pulled_back_by_the_regulariser(prior_snapshot):
    """All G candidates alike (here: "short" everywhere, after drift without the mirror) means no
    reward spread. The KL to the prior still applies to such groups, so the policy leaves the
    corner; without it, nothing could ever move it again."""
    cornered = learn(learner(prior_snapshot, mirror=False), "drift", 150)
    assert min(p["short"] for p in imbalance_probe(cornered).values()) > 0.95
    out = {}
    for kl in (0.1, 0.0):
        state = learner(prior_snapshot, kl_bootstrap_coef=kl)
        state.model.load_state_dict(cornered.model.state_dict())
        version = state.policy_version
        state = learn(state, "drift", 100, seed=1)
        out[kl] = (imbalance_probe(state), state.policy_version - version)
    print({kl: (max(p["short"] for p in probe.values()), moved) for kl, (probe, moved) in out.items()})
    assert max(p["short"] for p in out[0.1][0].values()) < 0.9 and out[0.1][1] == 100
    # without a regulariser only the rare group that samples something else moves the policy
    assert min(p["short"] for p in out[0.0][0].values()) > 0.95 and out[0.0][1] < 50
