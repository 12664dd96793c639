"""``scripts/test.sh`` stops exactly the broker it started, and ``scripts/broker-left.sh`` (what
``.ci/run`` checks after the suite) sees a broker of the suite that still runs.

The script runs for real against a throwaway data folder with a one-test inner suite; the inner
test records the broker it ran against and runs the leak check while that broker is up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
LEAK_CHECK = REPO / "scripts" / "broker-left.sh"

INNER = textwrap.dedent(f"""
    import json, os, subprocess
    from pathlib import Path

    def test_runs_against_the_suite_broker():
        data = Path(os.environ["EIGENLOOP_TEST_DATA_DIR"])
        state = json.loads((data / "kafka" / "broker.json").read_text())
        assert state["bootstrap"] == os.environ["EIGENLOOP_KAFKA_BOOTSTRAP"]
        assert "EIGENLOOP_DATA_DIR" not in os.environ  # tests choose their own folders
        Path(os.environ["BROKER_PID_OUT"]).write_text(str(state["pid"]))
        left = subprocess.run(["bash", {str(LEAK_CHECK)!r}, str(data)], capture_output=True, text=True)
        assert left.returncode == 1 and str(state["pid"]) in left.stderr, left
""")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_the_suite_script_stops_the_broker_it_started_and_no_other(tmp_path: Path):
    from daemon.ops import kafka_local

    suite = tmp_path / "suite"
    inner = tmp_path / "test_inner.py"
    inner.write_text(INNER)
    pid_out = tmp_path / "broker.pid"
    # a broker left running by an earlier suite that was killed before its exit trap
    leftover = kafka_local.start(suite)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
    # EIGENLOOP_DATA_DIR names another folder: the script's stop must not look there (the bug
    # was a trap that ran `kafka stop` in whatever folder the environment said)
    env.update(EIGENLOOP_TEST_DATA_DIR=str(suite), EIGENLOOP_VENV_BIN=str(Path(sys.executable).parent),
               EIGENLOOP_DATA_DIR=str(tmp_path / "elsewhere"), BROKER_PID_OUT=str(pid_out))
    try:
        run = subprocess.run(["bash", str(REPO / "scripts" / "test.sh"), str(inner)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "stopped a test broker left running by an earlier run" in run.stderr
        assert not _alive(leftover.pid), "the leftover broker was reused or left running"
        pid = int(pid_out.read_text())
        assert pid != leftover.pid
        # checked before the cleanup below, which would stop a leaked broker itself
        left = subprocess.run(["bash", str(LEAK_CHECK), str(suite)], capture_output=True, text=True)
        assert left.returncode == 0 and not _alive(pid), f"the suite's broker (pid {pid}) still runs: {left.stderr}"
        assert not (suite / "kafka" / "broker.json").exists()
    finally:
        kafka_local.stop(suite)  # whatever the script did, this test leaves no broker behind
