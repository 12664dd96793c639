"""The collapse report (``eigenloop analytics collapse``): is the diversity of self-generated data falling, and since when?

The metrics are the guard's own (``learners.diversity``), computed here from the ``groups`` rows
in windows of consecutive groups, exactly as ``daemon.service.guard`` judges them live. Windows, not
policy_version buckets: a collapsed policy yields zero-spread groups the learner skips, so its
policy_version stops moving and a per-version view would squeeze the whole collapse into one
row. Each window is labelled with the policy_versions that sampled it.

``views(db)`` holds a plain ClickHouse view with the per-group numbers SQL can compute exactly
(distinct ratio, reward spread, zero spread) for dashboards and ad hoc queries; the parsed-action
entropy needs the grammar's parser, so it is computed here in Python.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.ops.analytics.reports import Section
from daemon.ops.analytics.store import Result, Store
from schemas.learn import SIGNAL_STD_ATOL

DEFAULT_WINDOW = 32  # GuardConfig.window_groups' default: the report and the guard judge alike
DEFAULT_FLOOR = 1.0  # GuardConfig.entropy_floor_bits' default
MAX_ROWS = 60  # windows shown at most; the window widens past that


def views(db: str) -> list[str]:
    """Migration statements (idempotent) for the per-group diversity view."""
    return [f"""CREATE VIEW IF NOT EXISTS {db}.group_diversity AS
SELECT group_id, symbol, task, status, skip_reason, policy_version, ts_event, length(completions) AS candidates,
       length(arrayDistinct(completions)) / greatest(length(completions), 1) AS distinct_ratio,
       if(length(rewards) > 0, arrayMax(rewards) - arrayMin(rewards), 0.) AS reward_spread,
       length(rewards) < 2 OR arrayReduce('stddevSamp', rewards) <= {SIGNAL_STD_ATOL} AS zero_spread
FROM {db}.groups FINAL"""]


@dataclass(frozen=True)
class Trend:
    falling: bool
    since_policy_version: int | None
    latest: float | None
    peak: float | None
    peak_policy_version: int | None
    statement: str


def diversity_trend(entropy: list[float], version_from: list[int], zero_spread: list[float] | None = None,
                    drop: float = 0.25, floor: float | None = DEFAULT_FLOOR, smooth: int = 3) -> Trend:
    """Falling = the latest (smoothed) entropy is more than ``drop`` below its (smoothed) peak.
    ``since`` = the first window after the last one that was still within ``drop`` of the peak."""
    n = len(entropy)
    if n < smooth:
        return Trend(False, None, None, None, None,
                     f"Not enough data to tell whether diversity is falling: {n} window(s), need {smooth}.")
    sm = [sum(entropy[max(0, i - smooth + 1):i + 1]) / (i + 1 - max(0, i - smooth + 1)) for i in range(n)]
    peak_i = max(range(smooth - 1, n), key=lambda i: sm[i])  # a full window of smoothing only
    peak, latest = sm[peak_i], sm[-1]
    band = peak * (1 - drop)
    tail = ""
    if zero_spread:
        tail = f" Zero-spread share in the latest window: {zero_spread[-1]:.2f}."
    if floor is not None and latest < floor:
        tail = f" That is below the floor of {floor:g} bits." + tail
    peak_v = version_from[max(0, peak_i - smooth + 1)]
    if latest >= band or peak <= 0:
        return Trend(False, None, latest, peak, peak_v,
                     f"Diversity is not falling: action entropy {latest:.2f} bits over the latest windows, "
                     f"{peak:.2f} at its peak (from policy_version {peak_v}).{tail}")
    last_ok = max((i for i in range(n) if entropy[i] >= band), default=-1)
    since = version_from[min(last_ok + 1, n - 1)]
    return Trend(True, since, latest, peak, peak_v,
                 f"Diversity is falling: action entropy {latest:.2f} bits over the latest windows, down from "
                 f"{peak:.2f} at its peak (from policy_version {peak_v}); below {band:.2f} since policy_version "
                 f"{since}.{tail}")


def _ts(ns: Any) -> dt.datetime:
    if isinstance(ns, dt.datetime):
        return ns if ns.tzinfo else ns.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(int(ns) / 1e9, tz=dt.timezone.utc)


def compute(groups: Result, updates: Result, guard: Result, window: int | None = None,
            floor: float = DEFAULT_FLOOR) -> tuple[dict[str, tuple[Section, Result]], Trend]:
    """The report from query results. ``groups``: policy_version, ts_event, task, completions,
    rewards in time order; ``updates``: policy_version, block, updates, ratio_sum (of update_norm /
    param_norm); ``guard``: the guard_actions rows to list."""
    from learners.diversity import group_diversity, window_diversity

    rows = groups.dicts()
    w = window or DEFAULT_WINDOW
    if len(rows) > w * MAX_ROWS:
        w = math.ceil(len(rows) / MAX_ROWS)
    per_version: dict[int, list[tuple[int, float, float]]] = {}
    for u in updates.dicts():
        per_version.setdefault(int(u["policy_version"]), []).append(
            (int(u["block"]), float(u["updates"]), float(u["ratio_sum"])))
    win_rows, block_rows, prev_to = [], [], None
    for start in range(0, len(rows), w):
        chunk = rows[start:start + w]
        diversity = [group_diversity(r["completions"], r["rewards"], r["task"]) for r in chunk]
        m = window_diversity(diversity, [int(r["policy_version"]) for r in chunk])
        win_rows.append((start // w, _ts(chunk[0]["ts_event"]), m.policy_version_min, m.policy_version_max, m.groups,
                         m.action_entropy, m.mean_group_entropy, m.distinct_ratio, m.zero_spread_share, m.valid_share,
                         m.mean_reward_spread, len(m.distribution)))
        # the updates these groups caused land at versions after the ones that sampled them; the
        # learner may run ahead of the actor, so this attribution is approximate by a few versions
        lo = m.policy_version_min if prev_to is None else prev_to
        agg: dict[int, list[float]] = {}
        for v in range(lo + 1, m.policy_version_max + 2):
            for block, n, ratio_sum in per_version.get(v, []):
                a = agg.setdefault(block, [0.0, 0.0])
                a[0] += n
                a[1] += ratio_sum
        prev_to = m.policy_version_max + 1
        for block, (n, ratio_sum) in sorted(agg.items()):
            block_rows.append((start // w, m.policy_version_min, block, int(n), ratio_sum / n if n else 0.0))
    entropy = [r[5] for r in win_rows]
    trend = diversity_trend(entropy, [r[2] for r in win_rows], [r[8] for r in win_rows], floor=floor)
    cols = ["window", "first_seen", "version_from", "version_to", "groups", "action_entropy", "group_entropy",
            "distinct_ratio", "zero_spread_share", "valid_share", "reward_spread", "distinct_actions"]
    results = {
        "verdict": (Section("verdict", "Is diversity falling?", ""), Result(
            ["falling", "since_policy_version", "latest_entropy", "peak_entropy", "statement"], [],
            [(trend.falling, trend.since_policy_version, trend.latest, trend.peak, trend.statement)])),
        "windows": (Section("windows", f"Diversity per window of {w} groups", ""), Result(cols, [], win_rows)),
        "blocks": (Section("blocks", "Block update norm relative to parameter norm, per window", ""), Result(
            ["window", "version_from", "block", "updates", "mean_update_ratio"], [], block_rows)),
        "guard": (Section("guard", "Collapse guard actions", ""), guard),
    }
    return results, trend


def query(store: Store, last: int) -> tuple[Result, Result, Result]:
    db = store.database
    groups = store.query(f"""SELECT policy_version, ts_event, task, completions, rewards FROM (
    SELECT policy_version, ts_event, task, completions, rewards FROM {db}.groups FINAL
    ORDER BY ts_event DESC, group_id DESC LIMIT {int(last)}) ORDER BY ts_event, policy_version""", readonly=True)
    vmin = min((r[0] for r in groups.rows), default=0)
    updates = store.query(f"""SELECT policy_version, block, count() AS updates,
       sum(if(param_norm > 0, update_norm / param_norm, 0.)) AS ratio_sum
FROM {db}.block_updates FINAL WHERE policy_version > {int(vmin)} GROUP BY policy_version, block
ORDER BY policy_version, block""", readonly=True)
    guard = store.query(f"""SELECT ts_event, policy_version, action, blocks, value, reason
FROM {db}.guard_actions FINAL ORDER BY ts_event, policy_version""", readonly=True)
    return groups, updates, guard


def render(results: dict[str, tuple[Section, Result]], trend: Trend, out: Path, floor: float = DEFAULT_FLOOR) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wins = results["windows"][1].dicts()
    blocks = results["blocks"][1].dicts()
    actions = results["guard"][1].dicts()
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.8), squeeze=False)
    ax1, ax2, ax3 = axes[0]
    try:
        if not wins:
            for ax in (ax1, ax2, ax3):
                ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        else:
            x = [w["window"] for w in wins]
            ax1.plot(x, [w["action_entropy"] for w in wins], marker="o", ms=3, label="action entropy (window)")
            ax1.plot(x, [w["group_entropy"] for w in wins], ls="--", label="mean group entropy")
            ax1.axhline(floor, color="tab:red", lw=1, ls=":", label=f"floor {floor:g}")
            by_version = {w["version_to"]: w["window"] for w in wins}
            for a in actions:
                near = min(by_version, key=lambda v: abs(v - a["policy_version"]))
                ax1.axvline(by_version[near], color="grey", lw=0.8, alpha=0.6)
                ax1.text(by_version[near], ax1.get_ylim()[1], a["action"], rotation=90, va="top", fontsize=7)
            ax1.set(title="action entropy (bits)", xlabel="window", ylabel="bits")
            ax1.legend(fontsize=8)
            for key, label in (("zero_spread_share", "zero-spread share"), ("distinct_ratio", "distinct ratio"),
                               ("valid_share", "valid share")):
                ax2.plot(x, [w[key] for w in wins], marker="o", ms=3, label=label)
            ax2.set(title="signal and validity", xlabel="window", ylim=(-0.05, 1.05))
            ax2.legend(fontsize=8)
            for b in sorted({r["block"] for r in blocks}):
                pts = [(r["window"], r["mean_update_ratio"]) for r in blocks if r["block"] == b]
                ax3.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"block {b}")
            ax3.set(title="update norm / parameter norm", xlabel="window")
            if blocks:
                ax3.legend(fontsize=8)
        fig.suptitle(f"eigenloop analytics: collapse. {trend.statement}"[:160], fontsize=9)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
