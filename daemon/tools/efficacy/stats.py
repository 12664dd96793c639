"""Paired differences, seed pooling and spread: the arithmetic of the efficacy report.

Pure functions of decision records (dicts with at least ``phase``, ``symbol``, ``t0_ns``,
``capture`` and the reward rows), so every figure here can be checked by hand without a learner.

Why paired: the learned policy and every baseline are scored on the same decisions, so their
difference per decision cancels the market's own noise (a big move moves both). The SE of the
mean difference is then far smaller than the two rows' SEs combined, and it is the honest
yardstick for "learned beats random".

Why seeds are pooled per decision: seeds change the learner, not the market. Every seed takes
the same decisions on the same book, so stacking them as independent rows would divide the SE
by sqrt(seeds) for nothing (the heuristic's figure would be the same number three times).
Pooling therefore averages each decision over the seeds that took it, then takes mean ± SE
over decisions.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from daemon.service.baselines import mean_se

Record = dict[str, Any]

# (learned, baseline): the paired differences reported; the name is "learned-<baseline>"
PAIRS = (("learned", "random"), ("learned", "heuristic"), ("learned", "random_expected"))
PROBE_LOW, PROBE_HIGH = "im=-0.8", "im=+0.8"


def pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


PAIR_NAMES = tuple(pair_name(a, b) for a, b in PAIRS)


def paired(records: Sequence[Record], a: str, b: str) -> dict[str, float]:
    """Mean ± SE of ``r[a] - r[b]`` over the records (the same decisions on both sides)."""
    return mean_se([r[a] - r[b] for r in records])


def paired_table(records: Sequence[Record]) -> dict[str, dict[str, float]]:
    """Every reported paired difference over the same records."""
    return {pair_name(a, b): paired(records, a, b) for a, b in PAIRS}


def by_capture(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by the capture file they were taken in, in name order."""
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(r["capture"], []).append(r)
    return dict(sorted(out.items()))


def paired_report(records: Sequence[Record]) -> dict[str, Any]:
    """Paired differences over all the records and per capture."""
    return {"pooled": paired_table(records),
            "by_capture": {cap: paired_table(rs) for cap, rs in by_capture(records).items()}}


def decision_key(r: Record) -> tuple:
    """What makes two seeds' records the same decision: the phase, the symbol and the instant."""
    return r["phase"], r["symbol"], r["t0_ns"]


def pool_seeds(record_lists: Sequence[Sequence[Record]], fields: Sequence[str]) -> list[Record]:
    """One record per decision: each of ``fields`` averaged over the seeds that took it.

    Keeps ``phase``, ``symbol``, ``t0_ns`` and ``capture`` and adds ``seeds`` (how many took
    it: a seed whose group ran past a phase's end did not). Order: first seen, i.e. the first
    seed's close order, so splits by position (halves) stay meaningful.
    """
    acc: dict[tuple, list[Record]] = {}
    for records in record_lists:
        for r in records:
            acc.setdefault(decision_key(r), []).append(r)
    out = []
    for rs in acc.values():
        first = rs[0]
        row: Record = {k: first[k] for k in ("phase", "symbol", "t0_ns", "capture")}
        row.update({f: sum(r[f] for r in rs) / len(rs) for f in fields})
        row["seeds"] = len(rs)
        out.append(row)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def spread(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, sample sd, min and max across seeds; missing or NaN values are left out (``n``
    says how many counted)."""
    xs = [float(x) for x in values if _finite(x)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": m, "sd": sd, "min": min(xs), "max": max(xs), "n": n}


def side_gap(shares: dict[str, float]) -> float:
    return shares["long"] - shares["short"]


def probe_gap(probe: dict[str, Any] | None) -> float | None:
    """(P(long) - P(short)) at imbalance +0.8 minus the same at -0.8: how much the policy's side
    follows the imbalance (2 at most, 0 when the imbalance does not matter). None without a probe."""
    if not probe:
        return None
    return side_gap(probe[PROBE_HIGH]) - side_gap(probe[PROBE_LOW])


def last_probe(probes: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The run's last probe: the policy as it ended, which is what the probe target reads."""
    return probes[-1] if probes else None
