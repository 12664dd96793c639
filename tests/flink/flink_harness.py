"""Run the real ``eigenloop streams flink --local`` job as a subprocess and read its outputs.

The job is a process tree (the Python client, the JVM of the mini-cluster, the Python workers
the JVM starts), so it runs in its own session and is stopped or killed as a process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from schemas import decode
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EIGENLOOP = REPO / ".venv" / "bin" / "eigenloop"
FLINK_PYTHON = Path(os.environ.get("EIGENLOOP_FLINK_PYTHON", REPO / ".cache" / "flink-venv" / "bin" / "python"))
CONNECTOR = REPO / ".cache" / "flink"
# a modest heap: the suite shares two cores and the memory with a broker and a Faust worker
JVM_ARGS = "-Xms128m -Xmx768m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"


def flink_ready() -> str | None:
    """Why the Flink job cannot run here, or None when it can."""
    if not FLINK_PYTHON.exists():
        return f"no PyFlink environment at {FLINK_PYTHON}: run `make flink-setup`"
    if not list(CONNECTOR.glob("flink-sql-connector-kafka-*.jar")):
        return f"no Kafka connector jar in {CONNECTOR}: run `make flink-setup`"
    return None


class FlinkJob:
    """``eigenloop streams flink --local`` with a config file; stdout collected by a thread."""

    def __init__(self, config: Path, checkpoint_dir: Path, *args: str):
        self.config, self.checkpoint_dir, self.args = config, checkpoint_dir, list(args)
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self, *extra: str) -> "FlinkJob":
        env = dict(os.environ, EIGENLOOP_CONFIG=str(self.config), PYTHONUNBUFFERED="1",
                   EIGENLOOP_FLINK_PYTHON=str(FLINK_PYTHON), JVM_ARGS=os.environ.get("JVM_ARGS", JVM_ARGS))
        cmd = [str(EIGENLOOP), "streams", "flink", "--local", "--checkpoint-dir", str(self.checkpoint_dir),
               *self.args, *extra]
        if not EIGENLOOP.exists():
            cmd = [sys.executable, "-m", "daemon.cli", *cmd[1:]]
        self.lines = []
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        return self

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)

    def wait_submitted(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("flink job submitted" in line for line in self.lines):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"flink job exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)  # polling interval of a deadline loop, not synchronisation
        raise AssertionError(f"flink job not submitted in {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "".join(self.lines[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # the session this harness started, by its id
        except ProcessLookupError:
            pass

    def kill9(self) -> None:
        """SIGKILL to client, JVM and Python workers at once: nothing gets to clean up."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(20)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # the JVM and workers outlive a client killed first
        if self.proc.poll() is None:
            self.proc.wait(10)


class CommittedCollector:
    """Reads topics from the beginning with ``isolation.level=read_committed``, raw (no dedupe)."""

    def __init__(self, settings: Settings, topics: dict[str, str]):
        self.settings = settings
        self.base = {physical: base for base, physical in topics.items()}
        self.records: dict[str, list] = {base: [] for base in topics}
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> "CommittedCollector":
        from daemon.eventlog.connection import client_kwargs

        self._consumer = AIOKafkaConsumer(*self.base, auto_offset_reset="earliest", enable_auto_commit=False,
                                          isolation_level="read_committed", **client_kwargs(self.settings))
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()  # type: ignore[union-attr]

    async def until(self, done, timeout: float, alive=lambda: True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if done(self.records):
                return True
            batch = await self._consumer.getmany(timeout_ms=200)  # type: ignore[union-attr]
            for tp, msgs in batch.items():
                for m in msgs:
                    self.records[self.base[tp.topic]].append(decode(m.value))
        return done(self.records)
