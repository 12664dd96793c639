"""What the efficacy run must show: targets on held-out decisions, pooled over captures.

A target reads a run's *facts* (a flat dict of numbers, see ``facts``) and gives a value and a
threshold; it is met when value >= threshold. The same targets are evaluated per seed, on the
across-seed mean of the facts, and pooled (``pooled_facts``). In the across-seed mean the
thresholds that depend on the data (0.6 x heuristic, 2 x SE) are averaged like the values: the
SE stays a per-seed SE, not divided by sqrt(seeds), because the seeds share every decision and so
are not independent samples of the market. Pooled is the issue's own reading ("held out,
pooled"): each decision averaged over the seeds, the SE over decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from daemon.service.baselines import mean_se
from daemon.tools.efficacy.stats import last_probe, pair_name, paired, pool_seeds, probe_gap, spread

Facts = dict[str, float | None]
LEARNED_RANDOM = pair_name("learned", "random")


@dataclass(frozen=True)
class Target:
    name: str
    value: str  # the fact compared
    threshold: Callable[[Facts], float | None]  # from the facts, as some thresholds scale with the data


def _scaled(fact: str, factor: float) -> Callable[[Facts], float | None]:
    def threshold(f: Facts) -> float | None:
        x = f.get(fact)
        return None if x is None else factor * x
    return threshold


def _constant(value: float) -> Callable[[Facts], float]:
    return lambda f: value


TARGETS: dict[float, tuple[Target, ...]] = {
    0.0: (
        Target("learned >= 0.6 x heuristic", "learned", _scaled("heuristic", 0.6)),
        Target("learned - random >= 2 SE (paired)", LEARNED_RANDOM, _scaled(LEARNED_RANDOM + "_se", 2.0)),
        Target("probe gap >= 0.3 (last probe)", "probe_gap", _constant(0.3)),
    ),
    4.5: (Target("learned >= -0.5", "learned", _constant(-0.5)),),
}


def _number(x: Any) -> float | None:
    """A finite float, or None: NaN (an empty split, an SE of one value) is "not measured"."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def facts(heldout: Sequence[dict[str, Any]], probes: Sequence[dict[str, Any]] | None) -> Facts:
    """What the targets read from one seed's held-out records and its probes."""
    lr = paired(heldout, "learned", "random")
    return {
        "learned": _number(mean_se([r["learned"] for r in heldout])["mean"]),
        "heuristic": _number(mean_se([r["heuristic"] for r in heldout])["mean"]),
        LEARNED_RANDOM: _number(lr["mean"]), LEARNED_RANDOM + "_se": _number(lr["se"]),
        "probe_gap": _number(probe_gap(last_probe(probes))),
    }


def pooled_facts(heldout_by_seed: Sequence[Sequence[dict[str, Any]]], per_seed: Sequence[Facts]) -> Facts:
    """The facts of all seeds' held-out decisions pooled, each decision averaged over the seeds
    (the pooled paired table's convention): the SE is over decisions, the market's unit of
    evidence, with the policy's sampling noise averaged out. The probe gap is the seeds' mean."""
    pooled = pool_seeds(heldout_by_seed, ("learned", "random", "heuristic"))
    return {**facts(pooled, None), "probe_gap": spread(f.get("probe_gap") for f in per_seed)["mean"]}


def mean_facts(per_seed: Sequence[Facts]) -> Facts:
    """Each fact's mean across seeds (None where no seed has it)."""
    keys = dict.fromkeys(k for f in per_seed for k in f)
    return {k: spread(f.get(k) for f in per_seed)["mean"] for k in keys}


def evaluate(fee_bps: float, f: Facts) -> list[dict[str, Any]]:
    """Each target of this fee: value, threshold and met (None when either is not measured)."""
    out = []
    for t in TARGETS.get(float(fee_bps), ()):
        value, threshold = f.get(t.value), t.threshold(f)
        met = None if value is None or threshold is None else value >= threshold
        out.append({"name": t.name, "value": value, "threshold": threshold, "met": met})
    return out


def met_count(evaluated: Sequence[dict[str, Any]]) -> str:
    """"2/3 met" style, with the not-measured ones named apart."""
    met = sum(e["met"] is True for e in evaluated)
    unknown = sum(e["met"] is None for e in evaluated)
    text = f"{met}/{len(evaluated)}"
    return text + (f" ({unknown} n/a)" if unknown else "")
