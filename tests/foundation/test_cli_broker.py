"""The README's broker workflow, run as a user would: start, ensure topics twice, stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EIGENLOOP = str(Path(sys.executable).parent / "eigenloop")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([EIGENLOOP, *args], env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.kafka
def test_kafka_start_topics_ensure_twice_stop(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
    env["EIGENLOOP_DATA_DIR"] = str(tmp_path / "data")
    started = cli("kafka", "start", env=env)
    assert started.returncode == 0, started.stderr
    assert "kafka broker running at 127.0.0.1:" in started.stdout
    state = json.loads((tmp_path / "data" / "kafka" / "broker.json").read_text())
    try:
        again = cli("kafka", "start", env=env)  # idempotent: finds the running broker
        assert again.returncode == 0 and state["bootstrap"] in again.stdout
        first = cli("topics", "ensure", env=env)
        assert first.returncode == 0, first.stderr
        assert "10 created, 0 already present" in first.stdout
        second = cli("topics", "ensure", env=env)
        assert second.returncode == 0, second.stderr
        assert "0 created, 10 already present" in second.stdout
        status = cli("kafka", "status", env=env)
        assert status.returncode == 0 and "running" in status.stdout
    finally:
        stopped = cli("kafka", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not Path(f"/proc/{state['pid']}").exists() or "Z" in Path(f"/proc/{state['pid']}/stat").read_text().split()[2]
    status = cli("kafka", "status", env=env)
    assert status.returncode == 1 and "not running" in status.stdout
    # with no broker, commands that need one fail with one readable line
    ensure = cli("topics", "ensure", env=env)
    assert ensure.returncode == 2
    assert "no local broker running" in ensure.stderr and "Traceback" not in ensure.stderr
