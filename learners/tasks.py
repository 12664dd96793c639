"""A controlled market task at the market's noise level: the learner tests and benchmarks tune
the learning dynamics on it before anything runs on captures.

Prompts are market prompts with features at the recorded markets' scale. The reward is a paper
trade's sign: the winning side earns +1, the other side -1, flat 0. Who wins is decided by
``rule``:
- "drift": short always wins, whatever the prompt (a falling market);
- "signal": the side the imbalance points to wins;
- "noisy": the side the imbalance points to wins with probability ``p_right`` (0.56: the share
  in which the imbalance picks the winning side in the recorded captures), the other otherwise.
"""

from __future__ import annotations

import random
import statistics

from learners.grammar import PRIOR_SYMBOLS, format_market_prompt, market_scale_features, parse_action
from schemas import GRPOGroup


def prompt(rng: random.Random) -> tuple[str, float]:
    """A market prompt at the recorded scale (the bootstrap prior's distribution) and its imbalance."""
    f = market_scale_features(rng)
    return format_market_prompt(rng.choice(PRIOR_SYMBOLS), f), f.imbalance


def winner(rule: str, imbalance: float, rng: random.Random, p_right: float = 0.56) -> str:
    right = "long" if imbalance > 0 else "short"
    if rule == "drift":
        return "short"
    if rule == "signal" or rng.random() < p_right:
        return right
    return "short" if right == "long" else "long"


def rewards(completions: list[str], win: str) -> list[float]:
    out = []
    for c in completions:
        side = getattr(parse_action(c, "market"), "side", None)
        out.append(0.0 if side == "flat" else 1.0 if side == win else -1.0)
    return out


def group(i: int, prompt_text: str, completions: list[str], r: list[float], version: int) -> GRPOGroup:
    """A closed group with TRL's group-scaled advantages (std + 1e-4)."""
    m, sd = statistics.mean(r), statistics.pstdev(r)
    adv = [(x - m) / (sd + 1e-4) for x in r]
    return GRPOGroup(group_id=f"t{i}", symbol="BTCUSDT", policy_version=version, prompt=prompt_text,
                     completions=completions, candidate_indices=list(range(len(completions))), rewards=r,
                     advantages=adv, group_size=len(completions), ts_event=1_700_000_000_000_000_000 + i)
