"""The kill -9s of the fault suite: when, whom, and in which state each one landed.

- When: one kill in each of ``n`` equal slots of the chaos window (from the end of the set-up
  phases to the moment the replay is due to play its last line), at a random moment of its
  slot. The kills cover the whole run by construction and stay random within it; a burst at the
  start (what a chain of short random sleeps gives) mostly hits children still starting.
- Whom: the victims come from a shuffled, balanced list (daemon, streams worker, sink). A child
  is eligible only once it is up: its own ready line is in its log after its latest start.
  When the slot's victim is still starting, the first ready one further down the list goes.
- In which state: the daemon announces, through its opt-in fault hook (``daemon.service.fault_hook``),
  the windows "apply" (the model has stepped, its updates are not yet published) and
  "snapshot" (written under the temporary name, not yet renamed). Applying takes milliseconds,
  so a harness that reads a log line and then kills nearly always lands after it: for two
  daemon kills in three the harness arms the hook, the daemon holds at the window's start, and
  the kill lands inside it. Every daemon kill's state is read afterwards from the moments the
  killed process itself wrote (its last line), never from what the harness aimed at.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Awaitable, Callable

from daemon.ops.supervisor import Child, Supervisor

READY_LINES = {"daemon": b"daemon started", "streams": b"streams worker ready", "sink": b"analytics sink running"}
WINDOWS = ("apply", "snapshot")  # the daemon's fault-hook windows (daemon.service.learner_loop, daemon.service.snapshots)
READY_TIMEOUT_S = 300.0  # a restarted daemon loads torch and the model on a loaded 2-core machine
HOLD_MIN_S = 5.0  # an armed window may take until its slot ends, and at least this long
POLL_S = 0.02


@dataclass
class Kill:
    t_run: float  # seconds since the run began
    at: float  # where in the chaos window: 0 its start, 1 the replay's expected end
    target: str
    pid: int
    state: str  # from the killed process's own fault-hook moments: apply | snapshot | other
    armed: str | None  # the window the harness armed the hook for, if any
    late_s: float  # past its drawn moment (a victim still starting, an armed window to come)


class MarkingSupervisor(Supervisor):
    """A supervisor that remembers where each child's log stood at its latest (re)start, so a
    ready line is known to be the current process's, not a killed predecessor's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marks: dict[str, int] = {}

    async def _spawn(self, c: Child) -> None:
        self.marks[c.name] = c.log_path.stat().st_size if c.log_path.exists() else 0
        await super()._spawn(c)


class Moments:
    """Reads the fault hook's ``moments.log``: ``<pid> <window> enter|hold|release|leave <time>``."""

    def __init__(self, hook_dir: Path) -> None:
        self.dir = hook_dir
        self.path = hook_dir / "moments.log"
        self._pos = 0
        self.last: dict[int, tuple[str, str]] = {}  # pid -> (window, what) of its latest line
        self.seen: Counter = Counter()  # (window, what) over the whole run
        self.working: set[int] = set()  # pids that opened a window: their learner applies groups

    def poll(self) -> list[tuple[int, str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._pos)
            data = fh.read()
        done = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._pos += done
        new = []
        for line in data[:done].decode().splitlines():
            pid, window, what, _ = line.split()
            self.last[int(pid)] = (window, what)
            self.seen[(window, what)] += 1
            if what == "enter":
                self.working.add(int(pid))
            new.append((int(pid), window, what))
        return new

    def state_of(self, pid: int) -> str:
        """The window a dead process was in: its last line opened one and nothing closed it."""
        self.poll()
        window, what = self.last.get(pid, ("", ""))
        return window if what in ("enter", "hold") else "other"

    def arm(self, window: str) -> None:
        (self.dir / f"hold-{window}").touch()

    def disarm(self) -> None:
        for w in WINDOWS:
            (self.dir / f"hold-{w}").unlink(missing_ok=True)


def kill_times(rng: random.Random, n: int, start: float, end: float) -> list[float]:
    """One moment in each of ``n`` equal slots of [start, end], uniform within its slot."""
    width = (end - start) / n
    return [start + (i + rng.random()) * width for i in range(n)]


def victim_list(rng: random.Random, n: int, names: list[str]) -> list[str]:
    """``n`` victims, the names as evenly as ``n`` allows, in a random order."""
    out = [names[i % len(names)] for i in range(n)]
    rng.shuffle(out)
    return out


class Killer:
    def __init__(self, sup: MarkingSupervisor, moments: Moments, rng: random.Random) -> None:
        self.sup, self.moments, self.rng = sup, moments, rng
        self.children = {c.name: c for c in sup.children}
        self._ready_pid: dict[str, int] = {}
        self.kills: list[Kill] = []

    def ready(self, name: str) -> bool:
        c = self.children[name]
        if c.proc is None or c.proc.returncode is not None:
            return False
        if self._ready_pid.get(name) == c.proc.pid:
            return True
        with open(c.log_path, "rb") as fh:
            fh.seek(self.sup.marks[name])
            if READY_LINES[name] not in fh.read():
                return False
        self._ready_pid[name] = c.proc.pid
        return True

    def eligible(self, name: str, armed: bool, until: float) -> bool:
        """Ready, and for a daemon kill aimed at a window, working: its learner has applied a
        group since it started (a window is then likely to come within the slot). Past ``until``
        a ready daemon goes anyway: it may have nothing to apply (the replay is ending)."""
        if not self.ready(name):
            return False
        if name != "daemon" or not armed or time.monotonic() >= until:
            return True
        self.moments.poll()
        return self.children[name].proc.pid in self.moments.working

    async def _first_ready(self, queue: list[str], armed: bool = False, until: float = 0.0) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for name in queue:
                if self.eligible(name, armed, until):
                    return name
            await asyncio.sleep(0.2)  # polling interval of a deadline loop
        raise AssertionError(f"none of {sorted(set(queue))} ready after {READY_TIMEOUT_S:.0f} s")

    async def _held(self, window: str, until: float) -> int:
        """Arm ``window`` and return the pid of the daemon once it holds inside it, or at ``until``
        the daemon's as it is (no group to apply yet, say): its state is read afterwards either way.
        Waiting no longer than the slot keeps one armed kill from pushing the next ones together."""
        c = self.children["daemon"]
        self.moments.poll()  # moments before arming are not this kill's
        self.moments.arm(window)
        deadline = max(until, time.monotonic() + HOLD_MIN_S)
        while time.monotonic() < deadline:
            pid = c.proc.pid if c.proc is not None and c.proc.returncode is None else None
            if any(p == pid and w == window and what == "hold" for p, w, what in self.moments.poll()):
                return pid
            await asyncio.sleep(POLL_S)  # polling interval of a deadline loop
        await self._first_ready(["daemon"])
        return c.proc.pid

    async def run(self, kills: int, t_run0: float, start: float, end: float,
                  after_kill: Callable[[int], Awaitable[None]]) -> list[Kill]:
        """The whole schedule; ``after_kill(k)`` runs after the k-th kill (the broker restart)."""
        queue = victim_list(self.rng, kills, list(self.children))
        daemon_turn = 0
        width = (end - start) / kills
        last = -math.inf
        for k, drawn in enumerate(kill_times(self.rng, kills, start, end)):
            # a kill that came late (a victim still starting, the broker restart) does not bring
            # the next ones down at once: they keep a quarter of a slot apart
            when = max(drawn, last + width / 4)
            await asyncio.sleep(max(0.0, when - time.monotonic()))  # the schedule is the experiment, not a wait
            # two daemon kills in three go for a window (alternately apply and snapshot); the
            # third lands wherever the daemon happens to be
            aim = WINDOWS[(daemon_turn - daemon_turn // 3) % 2] if daemon_turn % 3 != 2 else None
            slot_end = start + (k + 1) * width
            name = await self._first_ready(queue, aim is not None, slot_end)
            queue.remove(name)
            armed = aim if name == "daemon" else None
            daemon_turn += name == "daemon"
            c = self.children[name]
            pid = await self._held(armed, slot_end) if armed else c.proc.pid
            proc = c.proc
            assert proc is not None and proc.pid == pid
            os.kill(pid, signal.SIGKILL)
            await proc.wait()  # the supervisor waits on it too; after this its moments are final
            self.moments.disarm()
            now = last = time.monotonic()
            self.kills.append(Kill(t_run=round(now - t_run0, 1), at=round((now - start) / (end - start), 3),
                                   target=name, pid=pid, state=self.moments.state_of(pid), armed=armed,
                                   late_s=round(now - drawn, 1)))
            await after_kill(k)
        return self.kills


def tenths(values: list[float]) -> list[int]:
    """How many values fall in each tenth of [0, 1); an eleventh bin counts those at 1 or after."""
    out = [0] * 11
    for v in values:
        out[min(10, max(0, math.floor(v * 10)))] += 1
    return out


def report(kills: list[Kill], run_s: float, window: tuple[float, float], moments: Moments) -> dict:
    daemon = [k for k in kills if k.target == "daemon"]
    return {
        "kills": len(kills),
        "run_s": round(run_s, 1),
        "window_s": [round(window[0], 1), round(window[1], 1)],  # since the run began
        "per_tenth_of_window": tenths([k.at for k in kills]),
        "per_tenth_of_run": tenths([k.t_run / run_s for k in kills]),
        "first_last_at": [min(k.at for k in kills), max(k.at for k in kills)] if kills else [],
        "per_target": dict(Counter(k.target for k in kills)),
        "daemon_states": dict(Counter(k.state for k in daemon)),
        "daemon_armed": dict(Counter(k.armed or "not armed" for k in daemon)),
        "daemon_armed_missed": sum(1 for k in daemon if k.armed and k.state != k.armed),
        "late_s_max": max((k.late_s for k in kills), default=0.0),
        "moments_seen": {f"{w} {what}": n for (w, what), n in sorted(moments.seen.items())},
        "log": [asdict(k) for k in kills],
    }


def print_report(rep: dict) -> None:
    print(f"kill distribution: {rep['kills']} kills over a {rep['run_s']} s run; chaos window "
          f"{rep['window_s'][0]}-{rep['window_s'][1]} s")
    print("  per tenth of the chaos window (last bin: after it):", rep["per_tenth_of_window"])
    print("  per tenth of the whole run:                        ", rep["per_tenth_of_run"][:10])
    print("  per target:", rep["per_target"], " daemon states:", rep["daemon_states"],
          " armed:", rep["daemon_armed"], " armed but missed:", rep["daemon_armed_missed"])
    print("  windows the daemons opened (fault hook):", rep["moments_seen"])
    for k in rep["log"]:
        print(f"   t={k['t_run']:7.1f}s at={k['at']:5.2f} {k['target']:8s} pid={k['pid']:<7d} "
              f"state={k['state']:8s} armed={k['armed'] or '-':8s} late={k['late_s']}s")
