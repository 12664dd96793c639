"""``eigenloop run``'s process supervisor: starts the children, restarts the ones that die,
stops them in order on SIGTERM.

Children are separate processes (the streams worker, the analytics sink, the daemon) so one can
crash, be killed or be restarted without the others, and each keeps its own memory. A child
that crashes, is killed, or exits ``EXIT_RETRY`` is restarted after an exponential backoff (1 s
doubling to 30 s, reset after a minute of good health); every restart is counted and logged. A
child that exits ``EXIT_STOP`` said that starting it again cannot help (a bad setting, an
unreadable risk file): it is not restarted, and ``given_up`` tells the caller to stop the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.errors import EXIT_STOP
from daemon.logging import get_logger

log = get_logger("supervisor")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    stop_timeout_s: float = 60.0
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    gave_up: bool = False  # exited EXIT_STOP: not restarted
    _backoff: float = 1.0
    _task: asyncio.Task | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, backoff_initial_s: float = 1.0, backoff_max_s: float = 30.0) -> None:
        self.children: list[Child] = []
        self._stopping = False
        self.given_up = asyncio.Event()  # set once a child exits EXIT_STOP
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s

    async def _spawn(self, c: Child) -> None:
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(c.log_path, "ab")
        c.proc = await asyncio.create_subprocess_exec(*c.argv, env=c.env, stdout=out, stderr=out,
                                                      stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        out.close()
        c.started_at = time.monotonic()
        log.info("child started", child=c.name, pid=c.proc.pid, log=str(c.log_path))

    async def add(self, c: Child) -> None:
        c._backoff = self.backoff_initial_s
        self.children.append(c)
        await self._spawn(c)
        c._task = asyncio.create_task(self._watch(c), name=f"watch-{c.name}")

    async def _watch(self, c: Child) -> None:
        while True:
            assert c.proc is not None
            rc = await c.proc.wait()
            if self._stopping:
                return
            if rc == EXIT_STOP:
                c.gave_up = True
                log.error("child cannot run as configured; not restarting it", child=c.name, returncode=rc,
                          log=str(c.log_path))
                self.given_up.set()
                return
            if time.monotonic() - c.started_at > 60:
                c._backoff = self.backoff_initial_s
            log.error("child exited; restarting", child=c.name, returncode=rc, restart_in_s=c._backoff,
                      log=str(c.log_path))
            await asyncio.sleep(c._backoff)  # backoff between restarts, not synchronisation
            c._backoff = min(self.backoff_max_s, c._backoff * 2)
            c.restarts += 1
            await self._spawn(c)

    async def stop(self) -> None:
        """SIGTERM each child in reverse start order, SIGKILL after its timeout."""
        self._stopping = True
        for c in reversed(self.children):
            if c._task:
                c._task.cancel()
            if c.proc is None or c.proc.returncode is not None:
                continue
            c.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(c.proc.wait(), c.stop_timeout_s)
                log.info("child stopped", child=c.name, returncode=c.proc.returncode)
            except asyncio.TimeoutError:
                log.error("child ignored SIGTERM; killing", child=c.name)
                c.proc.kill()
                await c.proc.wait()

    def gave_up(self) -> list[Child]:
        return [c for c in self.children if c.gave_up]

    def alive(self) -> dict[str, bool]:
        return {c.name: c.proc is not None and c.proc.returncode is None for c in self.children}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
