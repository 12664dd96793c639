"""Figures from decision records: the table per fee and split, the reference check, the targets,
the learning-curve PNG and a markdown rendering of the summary.

Rows (mean bps per decision +- standard error over the same decisions):
- ``learned``: the candidate the actor executed, scored as the learner scores it (size x pnl bps);
- ``learned_unit``: that candidate's side at size 1 (same fill, same stop): comparable with the
  baselines, which all trade the whole notional;
- ``learned_modal``: the candidate the actor's other rule (``choose="argmax"``: the most frequent
  side and size among the valid candidates) would have executed; same candidates, same rewards;
- ``group_mean``: the mean over the G candidates, i.e. the policy's expected reward as sampled;
- ``random``, ``flat``, ``heuristic``, ``hindsight``: the baselines (``daemon.efficacy.baselines``);
  ``random_expected`` is the random policy's expectation (the mean of the three sides), the same
  figure without the draw's noise.
"""

from __future__ import annotations

import math
from typing import Any

from daemon.efficacy.baselines import mean_se
from daemon.efficacy.config import EfficacyConfig

ROWS = ("learned", "learned_unit", "learned_modal", "group_mean",
        "random", "random_expected", "flat", "heuristic", "hindsight")
BASELINE_ROWS = ("random", "random_expected", "flat", "heuristic", "hindsight")
# issue 10, USD-M BTCUSDT 2024-08-08, from an independent simulator: (mean, se or None)
REFERENCE = {
    0.0: {"random": (-0.23, 0.17), "heuristic": (0.28, 0.11), "hindsight": (1.87, None)},
    4.5: {"random": (-5.95, None), "heuristic": (-3.33, None), "hindsight": (0.02, None)},
}
TARGETS = {0.0: 0.15, 4.5: -0.5}  # learned policy on held-out data, bps per decision, at least


def table(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {row: mean_se([r[row] for r in records]) for row in ROWS}
    n = len(records)
    executed = [r["executed_side"] for r in records]
    out["activity"] = {
        "decisions": n,
        "trade_share": sum(s in ("long", "short") for s in executed) / n if n else math.nan,
        "long_share": executed.count("long") / n if n else math.nan,
        "short_share": executed.count("short") / n if n else math.nan,
        "invalid_candidate_share": (sum(s == "invalid" for r in records for s in r["sides"])
                                    / max(1, sum(len(r["sides"]) for r in records))),
        "heuristic_trade_share": sum(abs(r["imbalance"]) > 0.6 for r in records) / n if n else math.nan,
    }
    return out


def _splits(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    train = [r for r in records if r["phase"].startswith("train")]
    held = [r for r in records if r["phase"] == "heldout"]
    return {"train_second_half": train[len(train) // 2:], "heldout": held,
            "run_second_half": records[len(records) // 2:],
            "train_first_pass": [r for r in records if r["phase"] == "train1"]}


def reference_check(records: list[dict[str, Any]], fee: float, capture: str) -> dict[str, Any]:
    """Baselines on the reference capture (its first pass) against issue 10's values."""
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


def summarise(cfg: EfficacyConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    fees: dict[str, Any] = {}
    for run in runs:
        recs, fee = run["records"], run["fee_bps"]
        splits = _splits(recs)
        by_cap: dict[str, list] = {}
        for r in splits["heldout"]:
            by_cap.setdefault(r["capture"], []).append(r)
        held = table(splits["heldout"]) if splits["heldout"] else None
        target = TARGETS.get(fee)
        fees[f"{fee:g}"] = {
            "fee_bps": fee,
            "splits": {name: table(rs) for name, rs in splits.items() if rs},
            "heldout_by_capture": {cap: table(rs) for cap, rs in sorted(by_cap.items())},
            "reference_check": reference_check(recs, fee, cfg.reference_capture),
            "target": None if target is None or held is None else {
                "threshold": target, "learned": held["learned"]["mean"], "met": held["learned"]["mean"] >= target},
            "phases": run["phases"], "timing": run["timing"], "unclosed_groups": run["unclosed_groups"],
            "probes": run.get("probes", []),
            "final_policy_version": run["final_policy_version"], "skipped_groups": run["skipped_groups"],
        }
    return {"config": cfg.to_json(), "captures": runs[0]["captures"] if runs else [], "fees": fees}


def _rolling(xs: list[float], w: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


def write_curve(runs: list[dict[str, Any]], summary: dict[str, Any], path) -> None:
    """Reward per decision against policy_version, one panel per fee, baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 2, figsize=(15, 4.2 * len(runs)), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1]})
    colours = {"random": "tab:red", "flat": "black", "heuristic": "tab:green", "hindsight": "tab:purple"}
    for pax, run in zip(axes[:, 1], runs):
        _probe_panel(pax, run)
    for ax, run in zip(axes[:, 0], runs):
        recs = run["records"]
        if not recs:
            continue
        w = max(10, min(100, len(recs) // 10))
        x = [r["policy_version"] for r in recs]
        ax.plot(x, _rolling([r["learned"] for r in recs], w), color="tab:blue", lw=1.5,
                label=f"learned, executed (rolling {w})")
        ax.plot(x, _rolling([r["group_mean"] for r in recs], w), color="tab:cyan", lw=1, alpha=0.8,
                label=f"learned, mean of G candidates (rolling {w})")
        for row, colour in colours.items():
            m = mean_se([r[row] for r in recs])["mean"]
            ax.axhline(m, color=colour, ls="--", lw=1, label=f"{row} {m:+.2f}")
        held = [r["policy_version"] for r in recs if r["phase"] == "heldout"]
        if held:
            ax.axvline(held[0], color="grey", ls=":", lw=1.5, label="held-out captures start")
        for ph in run["phases"][1:]:
            if ph["phase"].startswith("train"):
                ax.axvline(ph["policy_version_start"], color="grey", ls=":", lw=0.8)
        ax.set_title(f"fee {run['fee_bps']:g} bps per side: reward per decision vs policy_version "
                     f"(baselines over the same decisions)")
        ax.set_xlabel("policy_version at decision")
        ax.set_ylabel("bps per decision")
        ax.legend(fontsize=7, loc="lower left", ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _probe_panel(ax, run: dict[str, Any]) -> None:
    """P(long) - P(short) sampled on prompts that differ only in imbalance: does it matter?"""
    probes = run.get("probes") or []
    if not probes:
        ax.set_axis_off()
        return
    x = [p["policy_version"] for p in probes]
    for key, colour in (("im=-0.8", "tab:red"), ("im=+0.0", "grey"), ("im=+0.8", "tab:green")):
        ax.plot(x, [p[key]["long"] - p[key]["short"] for p in probes], color=colour, marker=".", lw=1,
                label=f"{key}: P(long) - P(short)")
    ax.plot(x, [p["im=+0.0"]["flat"] for p in probes], color="black", ls="--", lw=1, label="im=+0.0: P(flat)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(f"fee {run['fee_bps']:g}: probe prompts differing only in imbalance", fontsize=9)
    ax.set_xlabel("policy_version")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)


def _fmt(m: dict[str, float]) -> str:
    if m["n"] == 0:
        return "-"
    return f"{m['mean']:+.3f} ± {m['se']:.3f}" if m["se"] == m["se"] else f"{m['mean']:+.3f}"


def render_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Learning efficacy on recorded markets", ""]
    for key, fee in summary["fees"].items():
        splits = fee["splits"]
        names = [s for s in ("train_second_half", "heldout", "run_second_half") if s in splits]
        lines += [f"## fee {key} bps per side (taker), slippage none", "",
                  "| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row in ROWS:
            lines.append(f"| {row} | " + " | ".join(_fmt(splits[s][row]) for s in names) + " |")
        lines.append("| trade share (executed) | " + " | ".join(
            f"{splits[s]['activity']['trade_share']:.2f}" for s in names) + " |")
        lines.append("| decisions | " + " | ".join(str(splits[s]["activity"]["decisions"]) for s in names) + " |")
        lines += ["", "Held out, per capture (learned / heuristic / random / hindsight):", ""]
        for cap, t in fee["heldout_by_capture"].items():
            lines.append(f"- {cap}: {_fmt(t['learned'])} / {_fmt(t['heuristic'])} / {_fmt(t['random'])} / "
                         f"{_fmt(t['hindsight'])} (n={t['activity']['decisions']})")
        ref = fee["reference_check"]
        lines += ["", f"Reference check on {ref['capture']} ({ref['decisions']} decisions, phase {ref['phase']}):", ""]
        for row, e in ref["rows"].items():
            extra = ""
            if "reference" in e:
                extra = (f" vs reference {e['reference']:+.2f}: diff {e['diff']:+.3f}; within 2 SE: "
                         f"ours {e['within_2se_ours']}, combined {e['within_2se_combined']}")
            lines.append(f"- {row}: {_fmt(e['ours'])}{extra}")
        probes = fee.get("probes") or []
        if probes:
            lines += ["", "Probe (side shares on prompts that differ only in imbalance), last one of each phase:", ""]
            for phase in dict.fromkeys(p["phase"] for p in probes):
                p = [q for q in probes if q["phase"] == phase][-1]
                lines.append(f"- {phase} v{p['policy_version']}: " + "; ".join(
                    f"{k} L{v['long']:.2f} S{v['short']:.2f} F{v['flat']:.2f}" for k, v in p.items()
                    if k.startswith("im=")))
        if fee.get("target"):
            t = fee["target"]
            lines.append(f"\nTarget (held out, learned ≥ {t['threshold']:+.2f}): {t['learned']:+.3f} -> "
                         f"{'met' if t['met'] else 'missed'}")
        lines.append("")
    variants = summary.get("reference_variants")
    if variants:
        lines += ["## Reference capture: baselines by definition of the decision instant", "",
                  "| instants | decisions | heuristic trade share | " + " | ".join(
                      f"{k} heuristic" for k in variants["phase_scan"]) + " |",
                  "|---|---|---|" + "---|" * len(variants["phase_scan"])]
        for name in ("actor", "grid", "utc_grid"):
            v = variants[name]
            lines.append(f"| {name} | {v['decisions']} | {v['heuristic_trade_share']:.2f} | " + " | ".join(
                _fmt(v[k]["heuristic"]) for k in variants["phase_scan"]) + " |")
        for fee, rows in variants["phase_scan"].items():
            h = rows["heuristic"]
            lines.append(f"\nUTC grid shifted 0 .. 1.9 s, {fee}: heuristic from {h['min']:+.3f} to {h['max']:+.3f} "
                         f"(mean {h['mean']:+.3f})")
        lines.append("")
    lines.append(f"Wall time {summary.get('wall_s')} s on {summary.get('machine')}")
    return "\n".join(lines) + "\n"
