"""``summary.md``: the efficacy summary as markdown tables, held-out figures first."""

from __future__ import annotations

from typing import Any

from daemon.tools.efficacy.report import PAIRED_SPLITS, ROWS
from daemon.tools.efficacy.stats import PAIR_NAMES, PROBE_HIGH, PROBE_LOW
from daemon.tools.efficacy.targets import met_count

PROBE_KEYS = (PROBE_LOW, "im=+0.0", PROBE_HIGH)


def fmt_se(m: dict[str, float]) -> str:
    """``+0.123 ± 0.045`` (the SE left out when there is none, ``-`` for no value)."""
    if m["n"] == 0:
        return "-"
    return f"{m['mean']:+.3f} ± {m['se']:.3f}" if m["se"] == m["se"] else f"{m['mean']:+.3f}"


def fmt_num(x: float | None, digits: int = 3, sign: str = "+") -> str:
    """A signed figure (``sign=""`` for a magnitude such as an sd); ``-`` for none or NaN."""
    return "-" if x is None or x != x else f"{x:{sign}.{digits}f}"


def pair_label(name: str) -> str:
    return name.replace("-", " − ")


def table_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def split_table(fee: dict[str, Any]) -> list[str]:
    splits = fee["splits"]
    names = [s for s in PAIRED_SPLITS + ("run_second_half",) if s in splits]
    body = [[row] + [fmt_se(splits[s][row]) for s in names] for row in ROWS]
    body.append(["trade share (executed)"] + [f"{splits[s]['activity']['trade_share']:.2f}" for s in names])
    body.append(["decisions"] + [str(splits[s]["activity"]["decisions"]) for s in names])
    return ["Pooled over seeds (each decision averaged over the seeds; mean ± SE over decisions):", "",
            *table_lines(["row", *names], body)]


def paired_lines(fee: dict[str, Any]) -> list[str]:
    body = []
    for split in PAIRED_SPLITS:
        rep = fee["paired"].get(split)
        if rep is None:
            continue
        for cap, t in [("all captures", rep["pooled"]), *rep["by_capture"].items()]:
            body.append([split, cap, *(fmt_se(t[p]) for p in PAIR_NAMES), str(t[PAIR_NAMES[0]]["n"])])
    return ["Paired differences on the same decisions (mean ± SE of the per-decision difference), "
            "pooled over seeds:", "",
            *table_lines(["split", "capture", *map(pair_label, PAIR_NAMES), "n"], body)]


def seed_lines(fee: dict[str, Any]) -> list[str]:
    body = []
    for key, s in fee["per_seed"].items():
        held = s["splits"].get("heldout")
        paired = s["paired"].get("heldout", {}).get("pooled", {})
        body.append([key, fmt_se(held["learned"]) if held else "-",
                     *(fmt_se(paired[p]) if p in paired else "-" for p in PAIR_NAMES),
                     fmt_num(s["probe_gap"], 2), met_count(s["targets"])])
    spreads = fee["across_seeds"]["splits"].get("heldout", {})
    gap = fee["across_seeds"]["probe_gap"]
    cols = [spreads.get(c) for c in ("learned", *PAIR_NAMES)] + [gap]
    body.append(["mean across seeds", *(fmt_num(c and c["mean"]) for c in cols),
                 met_count(fee["targets_mean"]["targets"])])
    body.append(["sd across seeds", *(fmt_num(c and c["sd"], sign="") for c in cols), ""])
    body.append(["min .. max", *(f"{fmt_num(c['min'])} .. {fmt_num(c['max'])}" if c and c["n"] else "-"
                                 for c in cols), ""])
    return ["Per seed, held out, pooled over captures (probe gap: P(long) − P(short) at imbalance +0.8 "
            "minus at −0.8, last probe):", "",
            *table_lines(["seed", "learned", *map(pair_label, PAIR_NAMES), "probe gap", "targets met"], body)]


def target_cell(t: dict[str, Any]) -> str:
    verdict = {True: "met", False: "missed", None: "n/a"}[t["met"]]
    return f"{fmt_num(t['value'])} vs {fmt_num(t['threshold'])}: {verdict}"


def target_lines(fee: dict[str, Any]) -> list[str]:
    per_seed = {k: s["targets"] for k, s in fee["per_seed"].items()}
    mean = fee["targets_mean"]["targets"]
    if not mean:
        return []
    pooled = fee.get("targets_pooled", {}).get("targets") or [None] * len(mean)
    body = [[t["name"], *(target_cell(ts[i]) for ts in per_seed.values()), target_cell(t),
             target_cell(pooled[i]) if pooled[i] else "n/a"]
            for i, t in enumerate(mean)]
    return ["Targets (held out, pooled over captures; value vs threshold, met when value ≥ threshold; the "
            "across-seed column averages each seed's value and threshold; the pooled column averages each "
            "decision over the seeds, SE over decisions, as the pooled paired table):", "",
            *table_lines(["target", *(f"seed {k}" for k in per_seed), "across-seed mean", "pooled"], body)]


def probe_lines(fee: dict[str, Any]) -> list[str]:
    body = []
    for key, s in fee["per_seed"].items():
        p = s["probe_last"]
        if p:
            body.append([key, f"v{p['policy_version']} ({p['phase']})",
                         *(f"{p[k]['long']:.2f} / {p[k]['short']:.2f} / {p[k]['flat']:.2f}" for k in PROBE_KEYS),
                         fmt_num(s["probe_gap"], 2)])
    if not body:
        return ["Probe: off (probe_every = 0)."]
    return ["Probe, the last of each seed: P(long) / P(short) / P(flat), exact, averaged over 8 fixed market "
            "states written with each imbalance:", "", *table_lines(["seed", "at", *PROBE_KEYS, "gap"], body)]


def reference_lines(ref: dict[str, Any]) -> list[str]:
    if not ref["decisions"]:
        return [f"Reference check: {ref['capture']} is not among this run's captures."]
    lines = [f"Reference check on {ref['capture']} ({ref['decisions']} decisions, phase {ref['phase']}, "
             f"first seed):", ""]
    for row, e in ref["rows"].items():
        extra = ""
        if "reference" in e:
            extra = (f" vs reference {e['reference']:+.2f}: diff {e['diff']:+.3f}; within 2 SE: "
                     f"ours {e['within_2se_ours']}, combined {e['within_2se_combined']}")
        lines.append(f"- {row}: {fmt_se(e['ours'])}{extra}")
    return lines


def variant_lines(variants: dict[str, Any]) -> list[str]:
    scans = variants["phase_scan"]
    lines = ["## Reference capture: baselines by definition of the decision instant", "",
             *table_lines(["instants", "decisions", "heuristic trade share", *(f"{k} heuristic" for k in scans)],
                          [[name, str(variants[name]["decisions"]), f"{variants[name]['heuristic_trade_share']:.2f}",
                            *(fmt_se(variants[name][k]["heuristic"]) for k in scans)]
                           for name in ("actor", "grid", "utc_grid")])]
    for fee, rows in scans.items():
        h = rows["heuristic"]
        lines.append(f"\nUTC grid shifted 0 .. 1.9 s, {fee}: heuristic from {h['min']:+.3f} to {h['max']:+.3f} "
                     f"(mean {h['mean']:+.3f})")
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Learning efficacy on recorded markets", ""]
    for key, fee in summary["fees"].items():
        seeds = ", ".join(str(s) for s in fee["seeds"])
        lines += [f"## fee {key} bps per side (taker), slippage none; seeds {seeds}", ""]
        for part in (split_table, paired_lines, seed_lines, target_lines, probe_lines):
            block = part(fee)
            if block:
                lines += block + [""]
        lines += reference_lines(fee["reference_check"]) + [""]
    if summary.get("reference_variants"):
        lines += variant_lines(summary["reference_variants"]) + [""]
    lines.append(f"Wall time {summary.get('wall_s')} s on {summary.get('machine')}")
    return "\n".join(lines) + "\n"
