"""A verifiable market task for the learning test: the prompt carries a signal, the right side is its sign."""

import random

from learners.grammar import format_market_prompt, parse_action

ACTIONS = ("long 1 h5", "short 1 h5", "flat 0 h5")


def signal_prompt(rng: random.Random) -> tuple[str, int]:
    sign = rng.choice((-1, 1))
    # three agreeing returns: a salient signal a tiny model can find within a short test
    feats = {f"ret_{h}s": sign * rng.uniform(5, 50) for h in (1, 10, 60)}
    return format_market_prompt("SIG", feats), sign


def signal_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Bootstrap text: signal prompts with *random* sides, so the prior has no opinion."""
    return [(signal_prompt(rng)[0], rng.choice(ACTIONS)) for _ in range(n)]


def reward(completion: str, sign: int) -> float:
    spec = parse_action(completion, "market")
    want = "long" if sign > 0 else "short"
    return 1.0 if getattr(spec, "side", None) == want else 0.0
