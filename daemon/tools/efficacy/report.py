"""Figures from decision records: per fee, each seed's tables, paired differences and targets,
the same pooled over seeds, the spread across seeds and the reference check. The PNG is drawn by
``daemon.tools.efficacy.plots``, the markdown by ``daemon.tools.efficacy.markdown``; the arithmetic is
``daemon.tools.efficacy.stats``.

Rows (mean bps per decision +- standard error over the same decisions):
- ``learned``: the candidate the actor executed, scored as the learner scores it (size x pnl bps);
- ``learned_unit``: that candidate's side at size 1 (same fill, same stop): comparable with the
  baselines, which all trade the whole notional;
- ``learned_modal``: the candidate the actor's other rule (``choose="argmax"``: the most frequent
  side and size among the valid candidates) would have executed; same candidates, same rewards;
- ``group_mean``: the mean over the G candidates, i.e. the policy's expected reward as sampled;
- ``random``, ``flat``, ``heuristic``, ``hindsight``: the baselines (``daemon.service.baselines``);
  ``random_expected`` is the random policy's expectation (the mean of the three sides), the same
  figure without the draw's noise.

Pooled over seeds means per decision, averaged over the seeds (``stats.pool_seeds``): the n of
an SE is the decisions, never decisions x seeds.
"""

from __future__ import annotations

import math
from typing import Any

from daemon.service.baselines import mean_se
from daemon.tools.efficacy.config import EfficacyConfig
from daemon.tools.efficacy.stats import (PAIR_NAMES, by_capture, last_probe, paired_report, pool_seeds, probe_gap,
                                   spread)
from daemon.tools.efficacy.targets import evaluate, facts, mean_facts, pooled_facts

ROWS = ("learned", "learned_unit", "learned_modal", "group_mean",
        "random", "random_expected", "flat", "heuristic", "hindsight")
BASELINE_ROWS = ("random", "random_expected", "flat", "heuristic", "hindsight")
# USD-M BTCUSDT 2024-08-08, from an independent simulator (the product's reference figures): (mean, se or None)
REFERENCE = {
    0.0: {"random": (-0.23, 0.17), "heuristic": (0.28, 0.11), "hindsight": (1.87, None)},
    4.5: {"random": (-5.95, None), "heuristic": (-3.33, None), "hindsight": (0.02, None)},
}
# the splits paired differences and across-seed spreads are given for (heldout is the one that counts)
PAIRED_SPLITS = ("heldout", "train_second_half")


def rows(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {row: mean_se([r[row] for r in records]) for row in ROWS}


def activity(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the executed candidates did: shares of trades and sides, invalid candidates."""
    n = len(records)
    executed = [r["executed_side"] for r in records]
    return {
        "decisions": n,
        "trade_share": sum(s in ("long", "short") for s in executed) / n if n else math.nan,
        "long_share": executed.count("long") / n if n else math.nan,
        "short_share": executed.count("short") / n if n else math.nan,
        "invalid_candidate_share": (sum(s == "invalid" for r in records for s in r["sides"])
                                    / max(1, sum(len(r["sides"]) for r in records))),
        "heuristic_trade_share": sum(abs(r["imbalance"]) > 0.6 for r in records) / n if n else math.nan,
    }


def table(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {**rows(records), "activity": activity(records)}


def pooled_table(record_lists: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Rows over decisions, each averaged over the seeds; activity over every seed's records."""
    pooled = pool_seeds(record_lists, ROWS)
    raw = [r for rs in record_lists for r in rs]
    return {**rows(pooled), "activity": {**activity(raw), "decisions": len(pooled), "seed_decisions": len(raw)}}


def split_records(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    train = [r for r in records if r["phase"].startswith("train")]
    held = [r for r in records if r["phase"] == "heldout"]
    return {"train_second_half": train[len(train) // 2:], "heldout": held,
            "run_second_half": records[len(records) // 2:],
            "train_first_pass": [r for r in records if r["phase"] == "train1"]}


def reference_check(records: list[dict[str, Any]], fee: float, capture: str) -> dict[str, Any]:
    """Baselines on the reference capture (its first pass) against the reference values (``REFERENCE``)."""
    first_phase = next((r["phase"] for r in records if r["capture"] == capture), None)
    recs = [r for r in records if r["capture"] == capture and r["phase"] == first_phase]
    ref = REFERENCE.get(fee, {})
    out: dict[str, Any] = {"capture": capture, "phase": first_phase, "decisions": len(recs), "rows": {}}
    for row in ("random", "random_expected", "heuristic", "hindsight", "flat"):
        ours = mean_se([r[row] for r in recs])
        entry: dict[str, Any] = {"ours": ours}
        key = "random" if row == "random_expected" else row
        if key in ref:
            value, ref_se = ref[key]
            diff = ours["mean"] - value
            se = ours["se"] if ours["se"] == ours["se"] else 0.0
            if row == "random_expected":
                # the reference's random row is one draw: its noise is that of our draw, not of
                # the expectation, so that is the yardstick for comparing the expectation with it
                se = mean_se([r["random"] for r in recs])["se"]
            combined = math.hypot(se, ref_se or 0.0)  # both figures are estimates when both have an SE
            entry.update(reference=value, reference_se=ref_se, diff=diff,
                         z_ours=diff / se if se > 0 else math.nan,
                         within_2se_ours=abs(diff) <= 2 * se,
                         within_2se_combined=abs(diff) <= 2 * combined if combined > 0 else None)
        out["rows"][row] = entry
    return out


def seed_summary(run: dict[str, Any], reference_capture: str) -> dict[str, Any]:
    """One (fee, seed) run: its tables, paired differences, probe and targets."""
    recs, fee = run["records"], run["fee_bps"]
    splits = split_records(recs)
    probes = run.get("probes") or []
    seed_facts = facts(splits["heldout"], probes)
    return {
        "seed": run["seed"],
        "splits": {name: table(rs) for name, rs in splits.items() if rs},
        "paired": {name: paired_report(splits[name]) for name in PAIRED_SPLITS if splits[name]},
        "heldout_by_capture": {cap: table(rs) for cap, rs in by_capture(splits["heldout"]).items()},
        "reference_check": reference_check(recs, fee, reference_capture),
        "probes": probes, "probe_last": last_probe(probes), "probe_gap": probe_gap(last_probe(probes)),
        "facts": seed_facts, "targets": evaluate(fee, seed_facts),
        "phases": run["phases"], "timing": run["timing"], "unclosed_groups": run["unclosed_groups"],
        "final_policy_version": run["final_policy_version"], "skipped_groups": run["skipped_groups"],
    }


def pooled_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """All seeds' decisions of one fee together, each decision averaged over the seeds."""
    per_seed = [split_records(r["records"]) for r in runs]
    lists = {name: [s[name] for s in per_seed] for name in per_seed[0]}
    held = lists["heldout"]
    captures = by_capture(r for rs in held for r in rs)
    return {
        "splits": {name: pooled_table(ls) for name, ls in lists.items() if any(ls)},
        "paired": {name: paired_report(pool_seeds(lists[name], ROWS)) for name in PAIRED_SPLITS if any(lists[name])},
        "heldout_by_capture": {cap: pooled_table([[r for r in rs if r["capture"] == cap] for rs in held])
                               for cap in captures},
    }


def across_seeds(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd and min..max across seeds of each seed's learned mean, paired means and probe gap."""
    out: dict[str, Any] = {"splits": {}}
    for name in PAIRED_SPLITS:
        have = [s for s in seeds if name in s["paired"]]
        if not have:
            continue
        out["splits"][name] = {"learned": spread(s["splits"][name]["learned"]["mean"] for s in have),
                               **{p: spread(s["paired"][name]["pooled"][p]["mean"] for s in have)
                                  for p in PAIR_NAMES}}
    out["probe_gap"] = spread(s["probe_gap"] for s in seeds)
    return out


def summarise(cfg: EfficacyConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary: per fee, per seed (in ``cfg.seeds`` order), pooled, across seeds, targets."""
    fees: dict[str, Any] = {}
    for fee in dict.fromkeys(r["fee_bps"] for r in runs):
        fee_runs = sorted((r for r in runs if r["fee_bps"] == fee), key=lambda r: cfg.seeds.index(r["seed"]))
        seeds = [seed_summary(r, cfg.reference_capture) for r in fee_runs]
        mean = mean_facts([s["facts"] for s in seeds])
        pooled = pooled_facts([split_records(r["records"])["heldout"] for r in fee_runs], [s["facts"] for s in seeds])
        fees[f"{fee:g}"] = {
            "fee_bps": fee, "seeds": [s["seed"] for s in seeds],
            **pooled_summary(fee_runs),
            "per_seed": {str(s["seed"]): s for s in seeds},
            "across_seeds": across_seeds(seeds),
            "targets_mean": {"facts": mean, "targets": evaluate(fee, mean)},
            "targets_pooled": {"facts": pooled, "targets": evaluate(fee, pooled)},
            # the baselines but random do not depend on the seed: the first seed's check stands
            "reference_check": seeds[0]["reference_check"],
        }
    return {"config": cfg.to_json(), "captures": runs[0]["captures"] if runs else [], "fees": fees}
