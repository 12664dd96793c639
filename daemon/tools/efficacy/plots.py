"""The learning-curve PNG: one row per fee; reward per decision against policy_version (one line
per seed, baselines pooled over seeds) and the probe's P(long) - P(short) per imbalance."""

from __future__ import annotations

from typing import Any

from daemon.service.baselines import mean_se, rolling
from daemon.tools.efficacy.stats import side_gap

BASELINE_COLOURS = {"random": "tab:red", "flat": "black", "heuristic": "tab:green", "hindsight": "tab:purple"}
PROBE_COLOURS = (("im=-0.8", "tab:red"), ("im=+0.0", "grey"), ("im=+0.8", "tab:green"))
SEED_STYLES = ("-", "--", ":", "-.")


def runs_by_fee(runs: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["fee_bps"], []).append(run)
    return out


def write_curve(runs: list[dict[str, Any]], path) -> None:
    """One row of panels per fee: the learning curve (left) and the probe (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fees = runs_by_fee(runs)
    fig, axes = plt.subplots(len(fees), 2, figsize=(15, 4.2 * len(fees)), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1]})
    for (ax, pax), (fee, fee_runs) in zip(axes, fees.items()):
        curve_panel(ax, fee, fee_runs)
        probe_panel(pax, fee, fee_runs)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_panel(ax, fee: float, runs: list[dict[str, Any]]) -> None:
    """Rolling learned reward per seed; the first seed's group mean; baselines over all seeds."""
    all_recs = [r for run in runs for r in run["records"]]
    if not all_recs:
        ax.set_axis_off()
        return
    for i, run in enumerate(runs):
        recs = run["records"]
        if not recs:
            continue
        w = max(10, min(100, len(recs) // 10))
        x = [r["policy_version"] for r in recs]
        ax.plot(x, rolling([r["learned"] for r in recs], w), color="tab:blue", lw=1.3,
                ls=SEED_STYLES[i % len(SEED_STYLES)], label=f"learned, executed, seed {run['seed']} (rolling {w})")
        if i == 0:
            ax.plot(x, rolling([r["group_mean"] for r in recs], w), color="tab:cyan", lw=1, alpha=0.8,
                    label=f"learned, mean of G candidates, seed {run['seed']} (rolling {w})")
    for row, colour in BASELINE_COLOURS.items():
        m = mean_se([r[row] for r in all_recs])["mean"]
        ax.axhline(m, color=colour, ls="--", lw=1, label=f"{row} {m:+.2f}")
    first = runs[0]
    held = [r["policy_version"] for r in first["records"] if r["phase"] == "heldout"]
    if held:
        ax.axvline(held[0], color="grey", ls=":", lw=1.5, label=f"held-out captures start (seed {first['seed']})")
    for ph in first["phases"][1:]:
        if ph["phase"].startswith("train"):
            ax.axvline(ph["policy_version_start"], color="grey", ls=":", lw=0.8)
    ax.set_title(f"fee {fee:g} bps per side: reward per decision vs policy_version "
                 f"(baselines over the same decisions, all seeds)")
    ax.set_xlabel("policy_version at decision")
    ax.set_ylabel("bps per decision")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    ax.grid(alpha=0.3)


def probe_panel(ax, fee: float, runs: list[dict[str, Any]]) -> None:
    """P(long) - P(short) on the probe's market states at each imbalance, per seed: does it matter?"""
    if not any(run.get("probes") for run in runs):
        ax.set_axis_off()
        return
    for i, run in enumerate(runs):
        probes = run.get("probes") or []
        x = [p["policy_version"] for p in probes]
        for key, colour in PROBE_COLOURS:
            ax.plot(x, [side_gap(p[key]) for p in probes], color=colour, marker=".", lw=1,
                    ls=SEED_STYLES[i % len(SEED_STYLES)], label=f"{key}, seed {run['seed']}")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(f"fee {fee:g}: P(long) - P(short) by imbalance, mean of 8 probe states", fontsize=9)
    ax.set_xlabel("policy_version")
    ax.legend(fontsize=6, loc="lower left", ncol=len(runs))
    ax.grid(alpha=0.3)
