"""Run the real ``eigenloop streams worker`` as a subprocess and talk to it through Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer

from daemon.eventlog import EventProducer
from schemas import decode
from schemas.settings import Settings
from schemas.topics import topic_name
from streams.health import STALL_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
EIGENLOOP = REPO / ".venv" / "bin" / "eigenloop"


class Worker:
    """One worker process; ``stdout`` lines are collected by a thread so ``wait_ready`` can poll."""

    def __init__(self, settings: Settings, config: Path):
        self.settings, self.config = settings, config
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.stall_exits = 0  # restarts after an exit with the stall code

    def start(self) -> "Worker":
        env = dict(os.environ, EIGENLOOP_CONFIG=str(self.config), PYTHONUNBUFFERED="1")
        cmd = [str(EIGENLOOP), "streams", "worker"] if EIGENLOOP.exists() else \
            [sys.executable, "-m", "daemon.cli", "streams", "worker"]
        self.lines = []
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        return self

    def _pump(self, proc: subprocess.Popen) -> None:
        echo = os.environ.get("EIGENLOOP_WORKER_ECHO")  # a file to copy the worker's output to (debugging)
        with open(echo, "a") if echo else contextlib.nullcontext() as out:
            for line in proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                if out is not None:
                    out.write(line)
                    out.flush()
        # the worker exits with 75 when an input partition stalls, for its supervisor to restart
        # it (streams.health); do what `eigenloop run` and Kubernetes do
        if proc.wait() == STALL_EXIT_CODE and proc is self.proc:
            self.stall_exits += 1
            self.start()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("streams worker ready" in line for line in self.lines):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{''.join(self.lines[-60:])}")
            time.sleep(0.05)  # polling interval of a deadline loop, not synchronisation
        raise AssertionError(f"worker not ready in {timeout}s:\n{''.join(self.lines[-60:])}")

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 90.0) -> re.Match:
        """The first output line from index ``since`` on that matches ``pattern`` (a regex)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in self.lines[since:]:
                m = rx.search(line)
                if m:
                    return m
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{''.join(self.lines[-60:])}")
            time.sleep(0.05)  # polling interval of a deadline loop, not synchronisation
        raise AssertionError(f"no line matching {pattern!r} in {timeout}s:\n{''.join(self.lines[-60:])}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.model_dump(mode="json", exclude={"kafka": {"sasl_password"}, "analytics": {"password"}})
    path.write_text(yaml.safe_dump(data))
    return path


async def produce(settings: Settings, items: list[tuple[str, object]], raw: list[tuple[str, bytes]] = ()) -> None:
    async with EventProducer(settings) as p:
        for base, payload in raw:
            await p.raw.send(p.physical(base), payload, key=b"junk")
        for base, ev in items:
            await p.send(base, ev)
        await p.flush()


class Collector:
    """Reads output topics from the beginning; ``until`` polls with a deadline."""

    def __init__(self, settings: Settings, bases: list[str]):
        self.settings = settings
        self.topics = [topic_name(b, settings.kafka.topic_prefix) for b in bases]
        self.records: dict[str, list] = {b: [] for b in bases}
        self.arrival: dict[str, float] = {}
        self._base = {topic_name(b, settings.kafka.topic_prefix): b for b in bases}
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> "Collector":
        from daemon.eventlog.connection import client_kwargs

        self._consumer = AIOKafkaConsumer(*self.topics, auto_offset_reset="earliest", enable_auto_commit=False,
                                          **client_kwargs(self.settings))
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()  # type: ignore[union-attr]

    async def until(self, done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.records):
                return True
            batch = await self._consumer.getmany(timeout_ms=100)  # type: ignore[union-attr]
            now = time.time_ns()
            for tp, msgs in batch.items():
                for m in msgs:
                    ev = decode(m.value)
                    self.records[self._base[tp.topic]].append(ev)
                    self.arrival.setdefault(ev.event_id, now)
        return done(self.records)


def run(coro):
    return asyncio.run(coro)
