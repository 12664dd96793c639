"""`eigenloop analytics collapse`: the verdict logic, the windows computed from rows, and the real
CLI over an embedded ClickHouse holding a log that collapses half-way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from daemon.ops.analytics.collapse import compute, diversity_trend
from daemon.ops.analytics.store import Result
from schemas import BlockUpdate, GRPOGroup, GuardAction

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000_000_000
WINDOW, HEALTHY_WINDOWS, WINDOWS = 4, 4, 10
# eight distinct actions: 3 bits; this module stays free of torch so the writer process starts fast
ACTIONS = [f"{s} {z} h{h}" for s in ("long", "short") for z in ("0.5", "1") for h in (5, 30)]


def test_trend_says_whether_and_since_when_diversity_falls():
    flat = diversity_trend([2.0, 2.1, 1.9, 2.0, 2.05], [0, 10, 20, 30, 40])
    assert not flat.falling and flat.statement.startswith("Diversity is not falling")
    falling = diversity_trend([2.0, 2.2, 2.1, 1.2, 0.4, 0.2, 0.1], [0, 10, 20, 30, 40, 45, 45], [0, 0, 0, 0, .5, .9, 1])
    assert falling.falling and falling.since_policy_version == 30
    assert "since policy_version 30" in falling.statement and "below the floor of 1 bits" in falling.statement
    assert "Zero-spread share in the latest window: 1.00" in falling.statement
    recovered = diversity_trend([2.0, 2.1, 0.3, 0.2, 1.9, 2.0, 2.1], list(range(7)))
    assert not recovered.falling
    few = diversity_trend([1.0, 0.1], [0, 1])
    assert not few.falling and few.statement.startswith("Not enough data")


def synthetic_log() -> tuple[list[GRPOGroup], list[BlockUpdate], list[GuardAction]]:
    """Diverse groups that each move the policy, then collapsed ones that the learner skips (so
    policy_version stops), and one guard action."""
    groups, updates, version = [], [], 0
    for i in range(WINDOW * WINDOWS):
        healthy = i < WINDOW * HEALTHY_WINDOWS
        comps = ACTIONS[:8] if healthy else ["long 1 h30"] * 8
        rewards = [k / 7 for k in range(8)] if healthy else [1.0] * 8
        groups.append(GRPOGroup(group_id=f"g{i}", symbol="X", policy_version=version, prompt="M X>", completions=comps,
                                candidate_indices=list(range(8)), rewards=rewards, advantages=[0.0] * 8, group_size=8,
                                status="complete" if healthy else "skipped", ts_event=T0 + i * 10**9, key=f"g{i}"))
        if healthy:
            version += 1
            updates += [BlockUpdate(block=b, step=version, group_id=f"g{i}", loss=0.1, grad_norm=0.1, checksum="c",
                                    policy_version=version, update_norm=0.01 * (b + 1), param_norm=1.0, key=str(b),
                                    ts_event=T0 + i * 10**9) for b in range(2)]
    guard = [GuardAction(action="raise_temperature", reason="action entropy 0.00 bits < floor 1 for 2 windows",
                         policy_version=version, value=1.25, ts_event=T0 + WINDOW * WINDOWS * 10**9, key=str(version))]
    return groups, updates, guard


def as_results(groups, updates, guard) -> tuple[Result, Result, Result]:
    g = Result(["policy_version", "ts_event", "task", "completions", "rewards"], [],
               [(x.policy_version, x.ts_event, x.task, x.completions, x.rewards) for x in groups])
    agg: dict[tuple[int, int], list[float]] = {}
    for u in updates:
        a = agg.setdefault((u.policy_version, u.block), [0, 0.0])
        a[0] += 1
        a[1] += u.update_norm / u.param_norm
    u = Result(["policy_version", "block", "updates", "ratio_sum"], [],
               [(v, b, n, s) for (v, b), (n, s) in sorted(agg.items())])
    a = Result(["ts_event", "policy_version", "action", "blocks", "value", "reason"], [],
               [(x.ts_event, x.policy_version, x.action, x.blocks, x.value, x.reason) for x in guard])
    return g, u, a


def test_windows_blocks_and_verdict_from_rows():
    results, trend = compute(*as_results(*synthetic_log()), window=WINDOW)
    wins = results["windows"][1].dicts()
    assert len(wins) == WINDOWS
    collapsed = WINDOWS - HEALTHY_WINDOWS
    assert [round(w["action_entropy"], 2) for w in wins] == [3.0] * HEALTHY_WINDOWS + [0.0] * collapsed
    assert [w["zero_spread_share"] for w in wins] == [0.0] * HEALTHY_WINDOWS + [1.0] * (WINDOWS - HEALTHY_WINDOWS)
    assert wins[HEALTHY_WINDOWS]["version_from"] == WINDOW * HEALTHY_WINDOWS  # stuck: nothing is learned
    assert trend.falling and trend.since_policy_version == WINDOW * HEALTHY_WINDOWS
    blocks = results["blocks"][1].dicts()
    assert {(r["block"], round(r["mean_update_ratio"], 3)) for r in blocks} == {(0, 0.01), (1, 0.02)}
    assert sum(r["updates"] for r in blocks) == 2 * WINDOW * HEALTHY_WINDOWS
    assert results["verdict"][1].rows[0][0] is True and len(results["guard"][1].rows) == 1


_WRITE = """
import sys
from daemon.ops.analytics.collapse import views
from daemon.ops.analytics.ddl import BY_RECORD, KAFKA_COLUMNS
from daemon.ops.analytics.store import open_chdb
from tests.guard.test_collapse_report import synthetic_log

store = open_chdb(__import__("pathlib").Path(sys.argv[1]))
# only what the report reads (the full migration is tested in tests/analytics)
store.command(f"CREATE DATABASE IF NOT EXISTS {store.database}")
for name in ("groups", "block_updates", "guard_actions"):
    store.command(next(t for t in BY_RECORD.values() if t.name == name).create_sql(store.database))
for stmt in views(store.database):
    store.command(stmt)
for offset, ev in enumerate(ev for events in synthetic_log() for ev in events):
    spec = BY_RECORD[type(ev)]  # the row the sink would write (daemon.ops.analytics.sink.rows_for)
    cols = spec.columns()
    store.insert(f"{store.database}.{spec.name}", [[c.get(ev) for c in cols] + ["t", 0, offset]],
                 [c.name for c in cols] + [n for n, _ in KAFKA_COLUMNS])
print(store.query("SELECT count(), sum(zero_spread), round(avg(distinct_ratio), 4) "
                  "FROM eigenloop.group_diversity").rows)
store.close()
"""


def test_cli_report_over_embedded_clickhouse(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
    env.update(EIGENLOOP_DATA_DIR=str(tmp_path), EIGENLOOP_LOG_LEVEL="warning", PYTHONPATH=str(REPO))
    # written by another process: one process per chdb path, as in production (sink, then reports)
    w = subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path / "chdb")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert w.returncode == 0, w.stderr[-2000:]
    collapsed = WINDOW * (WINDOWS - HEALTHY_WINDOWS)
    distinct = (HEALTHY_WINDOWS * 1.0 + (WINDOWS - HEALTHY_WINDOWS) * 0.125) / WINDOWS
    assert w.stdout.strip().endswith(f"[({WINDOW * WINDOWS}, {collapsed}, {distinct:.4g})]"), w.stdout
    plot = tmp_path / "collapse.png"
    r = subprocess.run([str(Path(sys.executable).parent / "eigenloop"), "analytics", "collapse", "--window",
                        str(WINDOW), "-f", "json", "--plot", str(plot)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    (verdict,) = out["sections"]["verdict"]
    assert verdict["falling"] is True and verdict["since_policy_version"] == WINDOW * HEALTHY_WINDOWS
    assert "Diversity is falling" in verdict["statement"]
    assert len(out["sections"]["windows"]) == WINDOWS and out["sections"]["guard"][0]["action"] == "raise_temperature"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
