"""``eigenloop run`` as a newcomer meets it: a bad ``--speed`` is refused before anything starts,
the status line says how many sources are up, and a SIGTERM during the start (the model
bootstrap) stops the broker the run started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from daemon.cli import app
from daemon.cli.run import status_line

REPO = Path(__file__).resolve().parents[2]
EIGENLOOP = Path(sys.executable).parent / "eigenloop"
# the e2e tests' tiny model; the bootstrap's step count decides how long the start takes
TINY_LEARNER = {"model": {"n_blocks": 3, "n_layer": 1, "n_embd": 48, "n_head": 2}, "gen_len": 12,
                "sample_steps": 12, "lr": 3e-4, "seed": 0}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("speed", ["0", "-2", "nan"])
def test_a_speed_that_is_not_positive_is_refused_before_anything_starts(tmp_path: Path, speed: str):
    data = tmp_path / "data"
    result = CliRunner().invoke(app, ["run", "--speed", speed], env={"EIGENLOOP_DATA_DIR": str(data)})
    assert result.exit_code == 2, result.output
    assert "error: --speed must be > 0" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not data.exists()  # no broker, no topics, no model: nothing was started


def test_the_status_line_says_how_many_sources_are_up():
    st = {"events": 0, "decisions": 0, "groups": 0, "updates": 0, "policy_version": 0, "reward_ewma": None,
          "group_to_weights_p50_s": None, "sources": {"up": 0, "total": 9, "down": ["bluesky:jetstream"]}}
    line = status_line(12.0, st, {"streams": True, "daemon": True}, {})
    assert "events=0 sources_up=0/9 decisions=0" in line and "alive=" in line
    assert "daemon not answering yet" in status_line(1.0, None, {"daemon": True}, {"daemon": 1})


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.kafka
def test_sigterm_while_the_model_bootstraps_stops_the_broker_the_run_started(tmp_path: Path):
    data = tmp_path / "data"
    config = tmp_path / "run.yaml"
    # far more bootstrap steps than the test waits for: the SIGTERM lands in the bootstrap
    config.write_text(yaml.safe_dump({"data_dir": str(data), "http": {"port": _free_port()},
                                      "learner": {"bootstrap_steps": 1_000_000, "config": TINY_LEARNER}}))
    proc = subprocess.Popen([str(EIGENLOOP), "run", "--no-sink"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_clean_env(EIGENLOOP_CONFIG=str(config)))
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()

    def wait_for(text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((line for line in lines if text in line), None)
            if hit is not None:
                return hit
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.1)  # polling interval of a deadline loop
        raise AssertionError(f"no {text!r} within {timeout}s:\n{''.join(lines)}")

    try:
        wait_for("[run] local kafka broker at", 120)
        broker_pid = json.loads((data / "kafka" / "broker.json").read_text())["pid"]
        bootstrap_pid = int(wait_for("[run] model bootstrap running (pid", 120).split("pid ")[1].split(")")[0])
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        from daemon.ops import kafka_local

        leaked = kafka_local.stop(data)  # never leave a broker behind, whatever the run did
    out = "".join(lines)
    assert rc == 0, out
    assert not leaked and not _alive(broker_pid), "the run left its broker running:\n" + out
    assert not _alive(bootstrap_pid), "the bootstrap child outlived the run:\n" + out
    assert "[run] stop requested while starting" in out and "[run] local kafka broker stopped" in out
    assert not list((data / "snapshots").glob("*/state.json"))  # no half-trained model left as the initial one


def test_the_bootstrap_reports_progress_in_plain_lines_when_not_on_a_terminal(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "learner": {"config": TINY_LEARNER}}))
    out = subprocess.run([str(EIGENLOOP), "learner", "bootstrap", "--steps", "3", "--path", str(tmp_path / "init")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=_clean_env(EIGENLOOP_CONFIG=str(config)))
    assert out.returncode == 0, out.stdout + out.stderr
    # a log file gets what the terminal bar would show: step, loss, ETA, then the parse rate
    assert "bootstrap step=3 steps=3 loss=" in out.stderr and "eta_s=" in out.stderr, out.stderr
    assert "parse_rate=" in out.stderr and "done=True" in out.stderr, out.stderr
    assert f"initial snapshot: {tmp_path / 'init'}" in out.stdout
