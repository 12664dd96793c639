"""Baseline policies scored with the learner's own fill function, and the summary statistics.

Every baseline acts at size 1 (the whole allowed notional) with no stop, at the horizon the
actor uses, on exactly the decisions the learned policy takes, through ``streams.rewards.
paper_fill`` with the run's ``RewardConfig`` (reward kind forced to ``pnl`` so the figure is in
bps). The random policy draws long, short or flat uniformly from a generator seeded by the
decision itself, so it does not depend on what the learner did.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from schemas import MarketActionSpec
from schemas.settings import RewardConfig
from streams.rewards import BookPath, paper_fill

SIDES = ("long", "short", "flat")
IMBALANCE_THRESHOLD = 0.6  # the reference simulator's fixed heuristic (``efficacy.report.REFERENCE``)
BASELINES = ("random", "flat", "heuristic", "hindsight")


def unit_action(side: str, horizon_s: float) -> MarketActionSpec:
    return MarketActionSpec(side=side, size=0.0 if side == "flat" else 1.0, horizon_s=horizon_s)


def side_fills(t0_ns: int, book: BookPath, cfg: RewardConfig, horizon_s: float) -> dict[str, float]:
    """bps per decision of each side at size 1: the fills every baseline is built from."""
    return {side: paper_fill(unit_action(side, horizon_s), t0_ns, book, cfg).reward for side in SIDES}


def heuristic_side(imbalance: float) -> str:
    if imbalance > IMBALANCE_THRESHOLD:
        return "long"
    if imbalance < -IMBALANCE_THRESHOLD:
        return "short"
    return "flat"


def random_side(seed: int, symbol: str, t0_ns: int) -> str:
    # a string seed is hashed with sha512 by ``random``: stable across processes and runs
    return random.Random(f"{seed}|{symbol}|{t0_ns}").choice(SIDES)


def baseline_rewards(fills: dict[str, float], imbalance: float, random_pick: str) -> dict[str, float]:
    return {
        "random": fills[random_pick],
        "flat": fills["flat"],
        "heuristic": fills[heuristic_side(imbalance)],
        "hindsight": max(fills.values()),
        "random_expected": sum(fills.values()) / len(fills),
    }


def mean_se(xs: Sequence[float]) -> dict[str, float]:
    """Mean and its standard error (sample std / sqrt n); SE is NaN under two values.

    Decisions 2 s apart with 5 s horizons overlap, and symbols move together, so this i.i.d.
    SE understates the true uncertainty somewhat; it is the convention of the reference values.
    """
    n = len(xs)
    if n == 0:
        return {"mean": math.nan, "se": math.nan, "n": 0}
    m = sum(xs) / n
    if n < 2:
        return {"mean": m, "se": math.nan, "n": n}
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return {"mean": m, "se": math.sqrt(var / n), "n": n}


def rolling(xs: list[float], w: int) -> list[float]:
    """Trailing mean over ``w`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out
