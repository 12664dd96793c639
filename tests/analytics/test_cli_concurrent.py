"""Two real processes on one chdb path: a running sink, and ``eigenloop analytics`` beside it.

Also: every canned report renders a PNG while the sink runs, a second sink is refused, a
SIGKILLed sink leaves a usable path behind and its successor stores no duplicates.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from daemon.ops.analytics.reports import REPORTS
from schemas.settings import Settings

from .helpers import EIGENLOOP, REPO, build_log, cli_env, counts_of, produce_sync, run_cli

pytestmark = pytest.mark.kafka

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def start_sink(settings: Settings) -> subprocess.Popen[str]:
    """Start ``eigenloop analytics sink`` and return once it says it is running."""
    proc = subprocess.Popen([*EIGENLOOP, "analytics", "sink"], cwd=REPO, env=cli_env(settings),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the sink owns the path and serves queries
    if "analytics sink running" not in line:
        proc.kill()
        raise AssertionError(f"sink did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def query_json(settings: Settings, sql: str) -> list[dict]:
    r = run_cli(settings, "analytics", "--sql", sql, "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["sections"]["sql"]


def wait_for_rows(settings: Settings, table: str, n: int, deadline_s: float = 60) -> int:
    """Ask through the CLI until ``table`` holds ``n`` rows (each ask is a full CLI run)."""
    end = time.monotonic() + deadline_s
    got = -1
    while time.monotonic() < end:
        got = query_json(settings, f"SELECT count() AS n FROM eigenloop.{table} FINAL")[0]["n"]
        if got >= n:
            return got
    raise AssertionError(f"{table}: {got} rows after {deadline_s}s, want {n}")


def test_analytics_beside_a_running_sink(analytics_settings: Settings, tmp_path: Path):
    s = analytics_settings
    log = build_log(40)
    expected = counts_of(log)
    sink = start_sink(s)
    try:
        state = json.loads((s.data_dir / "chdb.sink.json").read_text())
        assert state["pid"] == sink.pid
        produce_sync(s, log)
        wait_for_rows(s, "outcomes", expected.outcomes)
        wait_for_rows(s, "block_updates", expected.tables["block_updates"])

        # several readers at once, all while the sink holds the path
        readers = [subprocess.Popen([*EIGENLOOP, "analytics", name, "--plot", str(tmp_path / f"{name}.png"),
                                     "--format", "json"], cwd=REPO, env=cli_env(s), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name in REPORTS]
        for name, proc in zip(REPORTS, readers):
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name}: {err}"
            sections = json.loads(out)["sections"]
            assert set(sections) == {sec.name for sec in REPORTS[name].sections}
            png = (tmp_path / f"{name}.png").read_bytes()
            assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name
        curve = json.loads(run_cli(s, "analytics", "learning-curve", "-f", "json").stdout)["sections"]
        assert len(curve["by_policy_version"]) == 40
        groups = json.loads(run_cli(s, "analytics", "groups", "-f", "json").stdout)["sections"]["by_status"]
        assert {(g["status"], g["reason"]) for g in groups} == {("complete", ""), ("skipped", "zero_spread")}
        table = run_cli(s, "analytics", "blocks")
        assert table.returncode == 0 and "Updates and loss per block" in table.stdout
        csv_out = run_cli(s, "analytics", "lag", "--format", "csv").stdout
        assert csv_out.startswith("# current\nconsumer_group,topic,partition,lag")

        # the reader path is read-only, and migrate explains instead of fighting the sink
        dropped = run_cli(s, "analytics", "--sql", "DROP TABLE eigenloop.outcomes")
        assert dropped.returncode != 0 and "read-only" in dropped.stderr
        mig = run_cli(s, "analytics", "migrate")
        assert mig.returncode == 0 and "owns the store" in mig.stdout
        second = run_cli(s, "analytics", "sink", timeout=60)
        assert second.returncode != 0 and f"another sink (pid {sink.pid})" in second.stderr

        # a crash: the kernel frees the locks; the next sink starts over uncommitted records
        sink.send_signal(signal.SIGKILL)
        sink.wait(timeout=30)
        more = build_log(10, seed=8, version_offset=40)
        produce_sync(s, more)
        sink = start_sink(s)
        total = counts_of(log + more)
        wait_for_rows(s, "outcomes", total.outcomes)
        rows = query_json(s, "SELECT count() AS n, uniqExact(event_id) AS u FROM eigenloop.outcomes")[0]
        assert rows == {"n": total.outcomes, "u": total.outcomes}
    finally:
        sink.send_signal(signal.SIGTERM)
        out, err = sink.communicate(timeout=60)
    assert sink.returncode == 0, err
    assert "analytics sink stopped" in out
    assert not (s.data_dir / "chdb.sink.json").exists()
    # with the sink gone, the CLI opens the engine itself
    assert query_json(s, "SELECT count() AS n FROM eigenloop.outcomes")[0]["n"] == total.outcomes
