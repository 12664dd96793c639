"""The live policy's exact side probe, exported for SREs: does the policy read its input?

``learners.probe`` computes, for fixed market states written with each probed imbalance, the exact
probability that the sampler writes each side. Exported as ``eigenloop_policy_side_probability``
and the one-number ``eigenloop_policy_imbalance_gap``; 0 means the policy gives every market the
same answer (a collapse onto one side, or a prior that never learned).
"""

from __future__ import annotations

from typing import Any

from daemon.service import metrics
from daemon.service.policy import ResidentPolicy
from learners.probe import imbalance_gap, imbalance_probe


def probe_policy(policy: ResidentPolicy) -> dict[str, Any]:
    """{"policy_version", "im=-0.8": {side: p}, ..., "gap"}: the exact probe of the resident model,
    taken under its lock at the temperature it samples with (the efficacy benchmark's probe too)."""
    version = policy.policy_version
    answers: dict[str, dict[str, float]] = policy.with_state(  # type: ignore[assignment]
        lambda st: imbalance_probe(st, temperature=policy.base_temperature))
    return {"policy_version": version, **answers, "gap": imbalance_gap(answers)}


def export_side_probe(policy: ResidentPolicy) -> dict[str, Any] | None:
    """Probe the resident model and set the gauges; None when the model's sampler has no exact
    side probability (it is not sequential), in which case nothing is exported."""
    if not policy.state.config.sequential:
        return None
    probe = probe_policy(policy)
    answers = {k: v for k, v in probe.items() if k.startswith("im=")}
    for key, probs in answers.items():
        for side, p in probs.items():
            metrics.SIDE_PROBABILITY.labels(key.removeprefix("im="), side).set(p)
    metrics.IMBALANCE_GAP.set(probe["gap"])
    return {"policy_version": probe["policy_version"], "gap": round(probe["gap"], 4),
            **{k: {s: round(p, 4) for s, p in v.items()} for k, v in answers.items()}}
