"""Diversity of the data the policy generates: pure functions over completions and rewards.

The premise of eigenloop is that self-generated data stays diverse; these are the numbers that
check it. Everything here except ``probe_distribution`` is plain Python (no torch), so the
analytics CLI computes exactly the same metrics from ClickHouse rows as the guard does live.

An *action key* is what a completion decides, coarsened so that spelling does not count as
diversity: market ``(side, size bucket, horizon bucket)``, social ``("pick", index, horizon
bucket)``. Buckets are the nearest grammar value (``SIZES``; ``HORIZONS`` on a log scale), so
``h50`` and ``h60`` are one horizon. Completions that do not parse have no key: they count in
``valid_share`` but never as diversity, because a policy that emits garbage is not exploring.

Entropies are Shannon entropies in bits of the empirical distribution (the plug-in estimate;
it is biased low for small samples, so floors must be set for a fixed window size).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

from learners.grammar import HORIZONS, SIZES, format_market_prompt, parse_action, random_market_features
from schemas.learn import rewards_have_signal

ActionKey = tuple


def _nearest(value: float, grid: Sequence[float], log: bool = False) -> float:
    if log:
        v = math.log(max(value, 1e-9))
        return min(grid, key=lambda g: abs(math.log(g) - v))
    return min(grid, key=lambda g: abs(g - value))


def action_key(completion: str, task: str = "market", n_choices: int | None = None) -> ActionKey | None:
    """The coarse decision a completion makes, or None when it does not parse."""
    a = parse_action(completion, task, n_choices=n_choices)  # type: ignore[arg-type]
    if getattr(a, "kind", None) == "invalid":
        return None
    if task == "social":
        return ("pick", a.pick, _nearest(a.horizon_s, HORIZONS, log=True))  # type: ignore[union-attr]
    return (a.side, _nearest(a.size, SIZES), _nearest(a.horizon_s, HORIZONS, log=True))  # type: ignore[union-attr]


def entropy_bits(items: Iterable[Hashable]) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``items``; 0 for none."""
    counts = Counter(items)
    n = sum(counts.values())
    if n == 0:
        return 0.0
    return max(0.0, -sum(c / n * math.log2(c / n) for c in counts.values()))


def distribution(items: Iterable[Hashable]) -> dict[Hashable, float]:
    counts = Counter(items)
    n = sum(counts.values())
    return {k: c / n for k, c in counts.items()} if n else {}


def js_divergence(p: dict[Hashable, float], q: dict[Hashable, float]) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1]. Symmetric and finite where one side has zeros,
    which matters here: a collapsed policy puts zero mass on most of the bootstrap's actions."""
    if not p or not q:
        return 0.0 if p == q else 1.0
    keys = set(p) | set(q)
    m = {k: 0.5 * (p.get(k, 0.0) + q.get(k, 0.0)) for k in keys}

    def kl(a: dict[Hashable, float]) -> float:
        return sum(v * math.log2(v / m[k]) for k, v in a.items() if v > 0)

    return min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def reward_spread(rewards: Sequence[float]) -> float:
    return (max(rewards) - min(rewards)) if rewards else 0.0


def no_signal(rewards: Sequence[float]) -> bool:
    """A group GRPO cannot learn from: fewer than two rewards, or all equal (the streams' and
    the learner's test, so the guard counts the groups the learner skipped)."""
    return not rewards_have_signal(rewards)


@dataclass(frozen=True)
class GroupDiversity:
    """Diversity of one closed group."""

    action_entropy: float  # bits, over the valid candidates' action keys
    distinct_ratio: float  # distinct completion texts / candidates
    reward_spread: float  # max - min reward
    valid_share: float  # candidates that parse
    zero_spread: bool  # no learning signal
    keys: tuple[ActionKey | None, ...]  # per candidate; None = did not parse


def group_diversity(completions: Sequence[str], rewards: Sequence[float], task: str = "market") -> GroupDiversity:
    keys = tuple(action_key(c, task) for c in completions)
    valid = [k for k in keys if k is not None]
    n = len(completions)
    return GroupDiversity(
        action_entropy=entropy_bits(valid),
        distinct_ratio=len(set(completions)) / n if n else 0.0,
        reward_spread=reward_spread(rewards),
        valid_share=len(valid) / n if n else 0.0,
        zero_spread=no_signal(rewards),
        keys=keys,
    )


@dataclass(frozen=True)
class WindowDiversity:
    """Diversity over a window of consecutive groups (the unit the guard judges)."""

    groups: int
    action_entropy: float  # bits, of all valid candidates of the window pooled
    mean_group_entropy: float  # bits, mean over groups (what one GRPO group sees)
    distinct_ratio: float  # mean over groups
    zero_spread_share: float  # groups without learning signal
    valid_share: float  # candidates that parse, pooled
    mean_reward_spread: float
    policy_version_min: int
    policy_version_max: int
    distribution: dict[ActionKey, float]

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "distribution"}
        d["distinct_actions"] = len(self.distribution)
        return d


def window_diversity(groups: Sequence[GroupDiversity], policy_versions: Sequence[int]) -> WindowDiversity:
    """Pool per-group diversity over a window; ``policy_versions`` are the groups' sampling versions."""
    if not groups:
        raise ValueError("a window needs at least one group")
    pooled = [k for g in groups for k in g.keys]
    valid = [k for k in pooled if k is not None]
    n = len(groups)
    return WindowDiversity(
        groups=n,
        action_entropy=entropy_bits(valid),
        mean_group_entropy=sum(g.action_entropy for g in groups) / n,
        distinct_ratio=sum(g.distinct_ratio for g in groups) / n,
        zero_spread_share=sum(g.zero_spread for g in groups) / n,
        valid_share=len(valid) / len(pooled) if pooled else 0.0,
        mean_reward_spread=sum(g.reward_spread for g in groups) / n,
        policy_version_min=min(policy_versions),
        policy_version_max=max(policy_versions),
        distribution=distribution(valid),
    )


def update_ratio(update_norm: float, param_norm: float) -> float:
    """A block's step size relative to its weights (||dtheta|| / ||theta||)."""
    return update_norm / param_norm if param_norm > 0 else 0.0


# -- the probe set ------------------------------------------------------------------------------

def probe_prompts(n: int = 16, seed: int = 1234,
                  symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT", "SOLUSDT")) -> list[str]:
    """A fixed set of market prompts: the same ``n`` prompts for the same seed, every time, so that
    a change of the probe distribution is a change of the policy and never of its inputs."""
    rng = random.Random(seed)
    return [format_market_prompt(symbols[i % len(symbols)], random_market_features(rng)) for i in range(n)]


def probe_keys(model, tokenizer, prompts: Sequence[str], *, samples: int, gen_len: int, steps: int,
               temperature: float, top_p: float, remasking: str, reveal_window: int | None,
               seed: int, constrain: bool = False) -> list[ActionKey | None]:
    """Action keys of ``samples`` completions per probe prompt, with a fixed seed per prompt;
    ``constrain``: sample from the action grammar, as a constrained actor does."""
    # torch: imported only where a model is used
    from learners.constraint import action_trie
    from learners.sampler import sample_completions

    keys: list[ActionKey | None] = []
    for i, prompt in enumerate(prompts):
        texts = sample_completions(model, tokenizer, prompt, n=samples, gen_len=gen_len, steps=steps,
                                   temperature=temperature, top_p=top_p, seed=seed + i, remasking=remasking,
                                   reveal_window=reveal_window,
                                   constraint=action_trie(prompt, tokenizer, gen_len) if constrain else None)
        keys.extend(action_key(t) for t in texts)
    return keys


def probe_distribution(keys: Sequence[ActionKey | None]) -> dict[Hashable, float]:
    """The probe's action distribution; unparseable output is one outcome of its own here, because
    drifting into garbage is a divergence from the bootstrap policy too."""
    return distribution("invalid" if k is None else k for k in keys)
