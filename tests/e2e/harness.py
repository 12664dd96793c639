"""End-to-end harness: the real daemon and streams worker as processes, the replay servers and
Kafka reads in the test process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from daemon.eventlog import read_range
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EIGENLOOP = Path(sys.executable).parent / "eigenloop"

# a model small enough to sample and learn quickly on two busy cores
TINY_LEARNER = {"model": {"n_blocks": 2, "n_layer": 1, "n_embd": 48, "n_head": 2}, "gen_len": 12,
                "sample_steps": 12, "lr": 3e-4, "seed": 0}
BOOT_STEPS = 250


def loop_settings(kafka_settings, tmp_path: Path, cluster):
    """A daemon on the tiny model against ``cluster``'s replay, snapshotting every 4 updates."""
    from schemas.settings import ActorSettings, GroupConfig, GuardSettings, HttpSettings, LearnerSettings

    return kafka_settings.model_copy(update=dict(
        data_dir=tmp_path / "data",
        learner=LearnerSettings(config=TINY_LEARNER, snapshot_every_updates=4, bootstrap_steps=BOOT_STEPS,
                                device="cpu"),
        http=HttpSettings(port=0),
        groups=GroupConfig(group_size=4, grace_s=1.0),
        actor=ActorSettings(cadence_s=2.0, horizon_s=5.0),
        sources=cluster.sources_settings(),
        # the guard's interventions are operator-like changes that a replay of learn.groups alone
        # does not repeat; these tests check that replay, so the guard only measures here
        guard=GuardSettings(enabled=False),
    ))


class Proc:
    """A CLI process with its output collected by a thread (so waits can poll it)."""

    def __init__(self, name: str, argv: list[str], config: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.config = name, argv, config
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> "Proc":
        env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
        env.update(EIGENLOOP_CONFIG=str(self.config), PYTHONUNBUFFERED="1", **self.extra_env)
        self.lines = []
        self.proc = subprocess.Popen([str(EIGENLOOP), *self.argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()
        return self

    @staticmethod
    def _pump(proc: subprocess.Popen, lines: list[str]) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{''.join(self.lines[-80:])}")
            time.sleep(0.05)  # polling interval of a deadline loop
        raise AssertionError(f"{self.name}: no {text!r} within {timeout}s:\n{''.join(self.lines[-80:])}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(20)

    def stop(self, timeout: float = 120.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout}s:\n{''.join(self.lines[-60:])}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.model_dump(mode="json", exclude={"kafka": {"sasl_password"}, "analytics": {"password"}})
    path.write_text(yaml.safe_dump(data))
    return path


def daemon_status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def http_port(proc: Proc, timeout: float = 180.0) -> int:
    line = proc.wait_for('"daemon": "started"', timeout)
    return json.loads(line[line.index("{"):])["http_port"]


def read_all(settings: Settings, topic: str) -> list:
    async def go():
        return [ev async for _, ev in read_range(settings, topic, isolation_level="read_committed")]
    return asyncio.run(go())


def install_snapshot(src: Path, data_dir: Path) -> Path:
    dst = data_dir / "snapshots" / "0000000000-bootstrap"
    shutil.copytree(src, dst)
    return dst


class ReplayThread:
    """The replay servers on their own event loop in a thread, so sync tests can drive processes."""

    def __init__(self, data_path: Path, **kw):
        from daemon.tools.capture_servers import ReplayCluster

        self.loop = asyncio.new_event_loop()
        self.cluster = ReplayCluster(data_path, **kw)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.cluster.start(), self.loop).result(30)
        return self.cluster

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.cluster.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def wait_status(port: int, ok, timeout: float, proc: Proc) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} died:\n{''.join(proc.lines[-80:])}")
        last = daemon_status(port)
        if last is not None and ok(last):
            return last
        time.sleep(0.25)  # polling interval of a deadline loop
    raise AssertionError(f"status never satisfied within {timeout}s; last {last}\n{''.join(proc.lines[-40:])}")


def clean_replay(initial: Path, groups, upto_offset: int | None = None):
    """Apply ``groups`` (log order) to the initial snapshot with the learner's pure step;
    returns (state, updates). The reference every live run must reproduce."""
    from daemon.service.learning import first_occurrences
    from learners.core import step
    from learners.snapshot import load_snapshot

    state = load_snapshot(initial, device="cpu")
    updates = []
    # the worker delivers at least once; the learner applies each group id once
    for g in first_occurrences(groups[:upto_offset]):
        state, ups = step(state, g)
        updates.extend(ups)
    return state, updates
