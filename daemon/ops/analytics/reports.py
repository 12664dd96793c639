"""Canned reports: named SQL sections over the tables and views, and their text renderings.

Base tables are read with ``FINAL`` so a not-yet-merged duplicate can never show; the
aggregate views are read with ``-Merge``/``GROUP BY`` because their rows are partial states.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from daemon.ops.analytics.store import Result, Store


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    sql: str


@dataclass(frozen=True)
class Report:
    name: str
    help: str
    sections: tuple[Section, ...]


REPORTS: dict[str, Report] = {r.name: r for r in (
    Report("learning-curve", "reward against policy_version and against time", (
        Section("by_policy_version", "Reward by policy_version", """
SELECT policy_version, count() AS outcomes, countIf(valid) AS valid, avg(reward) AS mean_reward,
       quantile(0.1)(reward) AS p10, quantile(0.5)(reward) AS p50, quantile(0.9)(reward) AS p90
FROM {db}.outcomes FINAL GROUP BY policy_version ORDER BY policy_version"""),
        Section("by_minute", "Reward per minute (all symbols)", """
SELECT minute, sum(n) AS outcomes, sum(reward_sum) / sum(n) AS mean_reward, min(reward_min) AS min_reward,
       max(reward_max) AS max_reward
FROM {db}.reward_minute GROUP BY minute ORDER BY minute"""),
        Section("by_symbol", "Reward per symbol", """
SELECT symbol, sum(n) AS outcomes, sum(valid) AS valid, sum(reward_sum) / sum(n) AS mean_reward,
       quantilesMerge(0.1, 0.5, 0.9)(reward_q) AS p10_p50_p90
FROM {db}.reward_minute GROUP BY symbol ORDER BY symbol"""),
    )),
    Report("blocks", "per-block update counts and loss", (
        Section("per_block", "Updates and loss per block", """
SELECT block, count() AS updates, avg(loss) AS mean_loss, argMax(loss, step) AS last_loss,
       avg(grad_norm) AS mean_grad_norm, max(step) AS last_step, max(policy_version) AS last_policy_version
FROM {db}.block_updates FINAL GROUP BY block ORDER BY block"""),
        Section("loss_by_minute", "Block loss per minute", """
SELECT block, minute, sum(updates) AS updates, avgMerge(loss) AS mean_loss, avgMerge(grad_norm) AS mean_grad_norm
FROM {db}.block_loss_minute GROUP BY block, minute ORDER BY block, minute"""),
        Section("policy_timeline", "policy_version timeline", """
SELECT policy_version, min(first_seen) AS first_seen, max(last_seen) AS last_seen, sum(updates) AS updates,
       arraySort(groupUniqArrayArray(blocks)) AS blocks, avgMerge(mean_loss) AS mean_loss
FROM {db}.policy_timeline GROUP BY policy_version ORDER BY policy_version"""),
    )),
    Report("groups", "group statistics: size, reward spread, skipped with reason", (
        Section("by_status", "Groups by status and reason", """
SELECT status, ifNull(skip_reason, '') AS reason, close_reason, count() AS groups,
       avg(length(rewards)) AS mean_size, avg(group_size) AS mean_planned_size,
       avg(arrayMax(rewards) - arrayMin(rewards)) AS mean_spread, avg(arrayReduce('stddevPop', rewards)) AS mean_std
FROM {db}.groups FINAL WHERE length(rewards) > 0
GROUP BY status, reason, close_reason ORDER BY groups DESC"""),
        Section("spread", "Reward spread distribution", """
SELECT round(arrayMax(rewards) - arrayMin(rewards), 1) AS spread, count() AS groups
FROM {db}.groups FINAL WHERE length(rewards) > 0 GROUP BY spread ORDER BY spread"""),
        Section("advantages", "Advantage distribution", """
SELECT bucket, sum(n) AS n FROM {db}.advantage_hist GROUP BY bucket ORDER BY bucket"""),
    )),
    Report("lag", "consumer lag per topic-partition, now and over time", (
        Section("current", "Current lag (latest sample per partition)", """
SELECT consumer_group, topic, partition, argMax(lag, ts) AS lag, argMax(committed, ts) AS committed,
       argMax(end_offset, ts) AS end_offset, max(ts) AS sampled_at
FROM {db}.consumer_lag GROUP BY consumer_group, topic, partition ORDER BY consumer_group, topic, partition"""),
        Section("by_minute", "Max lag per topic per minute", """
SELECT topic, minute, sum(max_lag) AS max_lag FROM (
    SELECT topic, partition, minute, max(max_lag) AS max_lag FROM {db}.lag_minute
    GROUP BY topic, partition, minute)
GROUP BY topic, minute ORDER BY topic, minute"""),
    )),
)}


def run_report(store: Store, name: str) -> dict[str, tuple[Section, Result]]:
    report = REPORTS[name]
    return {s.name: (s, store.query(s.sql.format(db=store.database).strip(), readonly=True))
            for s in report.sections}


def run_sql(store: Store, sql: str) -> dict[str, tuple[Section, Result]]:
    section = Section("sql", "Query", sql)
    return {"sql": (section, store.query(sql, readonly=True))}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return str(v)


def _plain(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    if not isinstance(v, (int, float, str, bool)) and v is not None:
        return str(v)
    return v


def to_json(results: dict[str, tuple[Section, Result]], report: str) -> str:
    out = {"report": report, "sections": {
        name: [{c: _plain(v) for c, v in zip(r.columns, row)} for row in r.rows] for name, (_, r) in results.items()}}
    return json.dumps(out, indent=2)


def to_csv(results: dict[str, tuple[Section, Result]]) -> str:
    """One CSV block per section; several sections are separated by a ``# name`` line."""
    buf = io.StringIO()
    many = len(results) > 1
    for i, (name, (_, r)) in enumerate(results.items()):
        if many:
            buf.write(("\n" if i else "") + f"# {name}\n")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(r.columns)
        for row in r.rows:
            w.writerow([_cell(v) for v in row])
    return buf.getvalue()


def to_tables(results: dict[str, tuple[Section, Result]], print_fn: Callable[[Any], None]) -> None:
    from rich.table import Table

    for _, (section, r) in results.items():
        table = Table(title=f"{section.title} ({len(r.rows)} rows)", title_justify="left")
        for c in r.columns:
            table.add_column(c, overflow="fold")
        for row in r.rows:
            table.add_row(*(_cell(v) for v in row))
        print_fn(table)
