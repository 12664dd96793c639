"""A small world in which a policy collapses: a tiny bootstrapped learner, a reward that favours
one action, and a loop that samples groups, scores them, applies the real block-local step and
feeds the guard, the way the daemon's actor, streams and learner loop do."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from daemon.service.guard import CollapseGuard
from daemon.service.policy import ResidentPolicy
from daemon.service.snapshots import write_snapshot
from learners.core import LearnerConfig
from learners.diversity import action_key
from learners.model import ModelConfig
from schemas import GRPOGroup, GuardAction
from schemas.learn import rewards_have_signal
from streams.grouping import compute_advantages

# What the tiny model is taught: ten actions of the real grammar, short enough for a 14-byte
# completion. Uniform over them is log2(10) = 3.3 bits.
ACTIONS = [f"{s} {z} h{h}" for s in ("long", "short") for z in ("0.5", "1") for h in (5, 30)] + \
          [f"flat 0 h{h}" for h in (5, 30)]
FAVOURED = ("long", 1.0, 30.0)
GROUP_SIZE = 8
T0 = 1_700_000_000_000_000_000


def prompt(rng: random.Random) -> str:
    return "M X r1=%+d>" % rng.randint(-9, 9)


def bootstrap_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    return [(prompt(rng), rng.choice(ACTIONS)) for _ in range(n)]


def probe_set(n: int = 8, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    return [prompt(rng) for _ in range(n)]


def tiny_config(**kw) -> LearnerConfig:
    # lr 1e-3 with low-confidence remasking collapses within a few dozen groups: fast to test
    base = dict(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=48, n_head=2, max_seq_len=32), gen_len=14,
                sample_steps=14, lr=1e-3, device="cpu", remasking="low_confidence", mc_draws=2,
                # the guard's scenarios need a policy that collapses onto one action: the ELBO
                # learner without the mirror (which exists to stop exactly that) and the
                # two-wide reveal window these collapse figures were measured with
                likelihood="elbo", mirror=False, reveal_window=2, betas=(0.9, 0.95), kl_bootstrap_coef=0.0)
    base.update(kw)
    return LearnerConfig(**base)


def reward(completion: str) -> float:
    """Partial credit towards one action: side first, then size and horizon."""
    key = action_key(completion)
    if key is None:
        return 0.0
    return 0.5 * (key[0] == FAVOURED[0]) + 0.25 * (key[1] == FAVOURED[1]) + 0.25 * (key[2] == FAVOURED[2])


@dataclass
class Run:
    actions: list[tuple[int, GuardAction]] = field(default_factory=list)  # (group index, action)
    groups: int = 0


def make_group(i: int, policy: ResidentPolicy, rng: random.Random, seed: int) -> GRPOGroup:
    p = prompt(rng)
    completions, version = policy.sample_sync(p, GROUP_SIZE, seed + i)
    rewards = [reward(c) for c in completions]
    (adv,) = compute_advantages([rewards], "group")
    zero = not rewards_have_signal(rewards)
    return GRPOGroup(group_id=f"g{seed}-{i}", symbol="X", policy_version=version, prompt=p, completions=completions,
                     candidate_indices=list(range(GROUP_SIZE)), rewards=rewards, advantages=adv, group_size=GROUP_SIZE,
                     status="skipped" if zero else "complete", skip_reason="zero_spread" if zero else None,
                     ts_event=T0 + i * 1_000_000_000, key=f"g{i}")


def drive(policy: ResidentPolicy, guard: CollapseGuard, n_groups: int, *, snapshot_root: Path, seed: int = 0,
          snapshot_every: int = 8, run: Run | None = None) -> Run:
    """Sample, score, step and observe ``n_groups`` groups; a snapshot every ``snapshot_every``."""
    run = run or Run()
    rng = random.Random(seed)
    for _ in range(n_groups):
        i = run.groups
        group = make_group(i, policy, rng, seed * 100_000)
        updates, _ = policy.apply_sync(group)
        for action in guard.observe([group], updates):
            run.actions.append((i, action))
        run.groups += 1
        if run.groups % snapshot_every == 0:
            policy.with_state(lambda st: write_snapshot(st, snapshot_root, {"learn.groups:0": run.groups}))
    return run
