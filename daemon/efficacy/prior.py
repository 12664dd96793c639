"""The benchmark's initial policy: grammar-only text, sides at random, so it has no opinion.

``learners.bootstrap`` teaches the whole action grammar (sizes, horizons up to 300 s, stops) on
prompts with synthetic features. The benchmark bootstraps on the same prompt format, with
features drawn at the scale the recorded markets show, and a smaller vocabulary: long, short or
flat at size 1 with the actor's 5 s horizon (what the baselines trade). Why: every sampled
candidate then parses, a completion is 12 bytes instead of 20 (the CPU budget is sampling
steps), and the learner spends its groups on *which side*, the question issue 10 asks. The
grammar itself is unchanged: anything else the policy writes is parsed and scored as usual.
"""

from __future__ import annotations

import math
import random

from learners.grammar import format_market_prompt

DEFAULT_ACTIONS = ("long 1 h5", "short 1 h5", "flat 0 h5")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BTCUSD", "ETHUSD")


def market_features(rng: random.Random) -> dict[str, float]:
    """Features at the recorded markets' scale (bps returns, sub-bps spreads), uniform imbalance."""
    return {
        "ret_1s": rng.gauss(0, 1), "ret_10s": rng.gauss(0, 3), "ret_60s": rng.gauss(0, 8),
        "spread_bps": math.exp(rng.uniform(math.log(0.01), math.log(0.2))),
        "imbalance": rng.uniform(-1, 1), "volume": 10 ** rng.uniform(3, 7),
    }


def pairs_for(actions: tuple[str, ...] | list[str]):
    """A ``pairs_fn`` for ``learners.bootstrap``: random prompt, uniformly random action."""
    actions = tuple(actions)

    def pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
        return [(format_market_prompt(rng.choice(SYMBOLS), market_features(rng)), rng.choice(actions))
                for _ in range(n)]

    return pairs


def parse_prompts(seed: int = 1234, n: int = 8) -> list[tuple[str, str]]:
    """Prompts for ``learners.bootstrap.parse_rate`` (market task only)."""
    rng = random.Random(seed)
    return [(format_market_prompt(rng.choice(SYMBOLS), market_features(rng)), "market") for _ in range(n)]
