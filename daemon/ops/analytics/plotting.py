"""PNG renderings of the reports (matplotlib, Agg backend: no display needed).

Each report has one figure with a panel per question it answers; an empty section draws a
"no data yet" panel instead of failing, so a fresh deployment still gets a picture.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from daemon.ops.analytics.reports import Section  # noqa: E402
from daemon.ops.analytics.store import Result  # noqa: E402

Results = dict[str, tuple[Section, Result]]


def _col(r: Result, name: str) -> list[Any]:
    i = r.columns.index(name)
    return [row[i] for row in r.rows]


def _empty(ax: Any, title: str) -> bool:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])
    return True


def _time_axis(ax: Any, times: list[Any]) -> None:
    """Readable UTC ticks; a lone minute gets a window around it instead of matplotlib's years."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    if times and min(times) == max(times):
        ax.set_xlim(min(times) - dt.timedelta(minutes=2), max(times) + dt.timedelta(minutes=2))


def _learning_curve(res: Results, axes: list[Any]) -> None:
    by_v = res["by_policy_version"][1]
    ax = axes[0]
    if not by_v.rows:
        _empty(ax, "reward vs policy_version")
    else:
        x = _col(by_v, "policy_version")
        ax.fill_between(x, _col(by_v, "p10"), _col(by_v, "p90"), alpha=0.25, label="p10-p90")
        ax.plot(x, _col(by_v, "mean_reward"), marker="o", ms=3, label="mean")
        ax.plot(x, _col(by_v, "p50"), ls="--", label="median")
        ax.set(title="reward vs policy_version", xlabel="policy_version", ylabel="reward")
        ax.legend(fontsize=8)
    by_m = res["by_minute"][1]
    ax = axes[1]
    if not by_m.rows:
        _empty(ax, "reward vs time")
    else:
        t = _col(by_m, "minute")
        ax.fill_between(t, _col(by_m, "min_reward"), _col(by_m, "max_reward"), alpha=0.2, label="min-max")
        ax.plot(t, _col(by_m, "mean_reward"), marker="o", ms=3, label="mean per minute")
        ax.set(title="reward vs time (UTC)", xlabel="minute", ylabel="reward")
        ax.legend(fontsize=8)
        _time_axis(ax, t)


def _blocks(res: Results, axes: list[Any]) -> None:
    per = res["per_block"][1]
    ax = axes[0]
    if not per.rows:
        _empty(ax, "updates per block")
    else:
        blocks = [str(b) for b in _col(per, "block")]
        ax.bar(blocks, _col(per, "updates"), color="tab:blue")
        ax.set(title="updates per block", xlabel="block", ylabel="updates")
        twin = ax.twinx()
        twin.plot(blocks, _col(per, "mean_loss"), color="tab:red", marker="o", label="mean loss")
        twin.set_ylabel("mean loss", color="tab:red")
    series = res["loss_by_minute"][1]
    ax = axes[1]
    if not series.rows:
        _empty(ax, "block loss over time")
    else:
        lines: dict[int, tuple[list[dt.datetime], list[float]]] = defaultdict(lambda: ([], []))
        for block, minute, loss in zip(_col(series, "block"), _col(series, "minute"), _col(series, "mean_loss")):
            lines[block][0].append(minute)
            lines[block][1].append(loss)
        for block, (t, y) in sorted(lines.items()):
            ax.plot(t, y, marker="o", ms=3, label=f"block {block}")
        ax.set(title="block loss per minute", xlabel="minute (UTC)", ylabel="mean loss")
        ax.legend(fontsize=8)
        _time_axis(ax, _col(series, "minute"))


def _groups(res: Results, axes: list[Any]) -> None:
    st = res["by_status"][1]
    ax = axes[0]
    if not st.rows:
        _empty(ax, "groups by status")
    else:
        labels = [f"{s}\n{r}" if r else s for s, r in zip(_col(st, "status"), _col(st, "reason"))]
        ax.bar(labels, _col(st, "groups"), color="tab:green")
        ax.set(title="groups by status / skip reason", ylabel="groups")
        ax.tick_params(axis="x", labelsize=7)
    sp = res["spread"][1]
    ax = axes[1]
    if not sp.rows:
        _empty(ax, "reward spread")
    else:
        ax.bar(_col(sp, "spread"), _col(sp, "groups"), width=0.08, color="tab:orange")
        ax.set(title="reward spread per group (max - min)", xlabel="spread", ylabel="groups")
    adv = res["advantages"][1]
    ax = axes[2]
    if not adv.rows:
        _empty(ax, "advantages")
    else:
        ax.bar(_col(adv, "bucket"), _col(adv, "n"), width=0.22, color="tab:purple")
        ax.set(title="advantage distribution", xlabel="advantage (bucket 0.25)", ylabel="candidates")


def _base_topic(name: str) -> str:
    """The catalogue name without the deployment prefix, for compact labels."""
    from schemas.topics import BY_NAME

    return next((base for base in BY_NAME if name.endswith(base)), name)


def _lag(res: Results, axes: list[Any]) -> None:
    cur = res["current"][1]
    ax = axes[0]
    if not cur.rows:
        _empty(ax, "current lag")
    else:
        labels = [f"{_base_topic(t)}[{p}]" for t, p in zip(_col(cur, "topic"), _col(cur, "partition"))]
        lags = _col(cur, "lag")
        ax.barh(labels, lags, color="tab:red")
        ax.set(title="current lag per partition", xlabel="records behind")
        ax.tick_params(axis="y", labelsize=6)
        if not any(lags):
            ax.text(0.5, 0.5, "all partitions caught up", ha="center", va="center", transform=ax.transAxes)
    series = res["by_minute"][1]
    ax = axes[1]
    if not series.rows:
        _empty(ax, "lag over time")
    else:
        lines: dict[str, tuple[list[Any], list[Any]]] = defaultdict(lambda: ([], []))
        for topic, minute, lag in zip(_col(series, "topic"), _col(series, "minute"), _col(series, "max_lag")):
            lines[topic][0].append(minute)
            lines[topic][1].append(lag)
        for topic, (t, y) in sorted(lines.items()):
            ax.plot(t, y, marker="o", ms=3, label=topic)
        ax.set(title="max lag per minute", xlabel="minute (UTC)", ylabel="records behind")
        ax.legend(fontsize=7)
        _time_axis(ax, _col(series, "minute"))


def _adhoc(res: Results, axes: list[Any]) -> None:
    """--sql: x is the first column, every numeric column after it is a series."""
    _, r = res["sql"]
    ax = axes[0]
    if not r.rows or len(r.columns) < 2:
        _empty(ax, "query")
        return
    x = _col(r, r.columns[0])
    numeric_x = all(isinstance(v, (int, float, dt.datetime, dt.date)) for v in x)
    for name in r.columns[1:]:
        y = _col(r, name)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in y):
            continue
        if numeric_x:
            ax.plot(x, y, marker="o", ms=3, label=name)
        else:
            ax.bar([str(v) for v in x], y, label=name, alpha=0.7)
    ax.set(title="query", xlabel=r.columns[0])
    ax.legend(fontsize=8)


PLOTS: dict[str, tuple[int, Callable[[Results, list[Any]], None]]] = {
    "learning-curve": (2, _learning_curve),
    "blocks": (2, _blocks),
    "groups": (3, _groups),
    "lag": (2, _lag),
    "sql": (1, _adhoc),
}


def render(name: str, results: Results, out: Path) -> Path:
    panels, draw = PLOTS[name]
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    try:
        draw(results, list(axes[0]))
        fig.suptitle(f"eigenloop analytics: {name}")
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
