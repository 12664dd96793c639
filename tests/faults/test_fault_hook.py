"""The opt-in fault hook (``daemon.service.fault_hook``) and the harness's reading of it (``killer``)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from daemon.service import fault_hook
from killer import Moments, kill_times, tenths, victim_list

# a stand-in for the daemon: it opens the "apply" window the way the learner loop does
CHILD = """
import asyncio
from daemon.service import fault_hook
async def main():
    await fault_hook.reached_async("apply")
    fault_hook.left("apply")
asyncio.run(main())
"""


def test_unset_is_inert(tmp_path, monkeypatch):
    monkeypatch.setattr(fault_hook, "_DIR", None)
    (tmp_path / "hold-apply").touch()  # armed or not, an unset hook neither writes nor holds
    fault_hook.reached("apply")
    asyncio.run(fault_hook.reached_async("apply"))
    fault_hook.left("apply")
    assert list(tmp_path.iterdir()) == [tmp_path / "hold-apply"]


def test_unarmed_windows_are_recorded_and_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(fault_hook, "_DIR", tmp_path)
    fault_hook.reached("snapshot")
    moments = Moments(tmp_path)
    assert moments.state_of(os.getpid()) == "snapshot"  # killed here, it would be "in a snapshot"
    fault_hook.left("snapshot")
    assert moments.state_of(os.getpid()) == "other"
    assert moments.seen == {("snapshot", "enter"): 1, ("snapshot", "leave"): 1}


def test_a_process_killed_while_held_is_recorded_in_its_window(tmp_path):
    moments = Moments(tmp_path)
    moments.arm("apply")
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env={**os.environ, "EIGENLOOP_FAULT_HOOK": str(tmp_path)})
    try:
        deadline = time.monotonic() + 60
        while not any(w == "apply" and what == "hold" for _, w, what in moments.poll()):
            assert proc.poll() is None and time.monotonic() < deadline, "the child never held"
            time.sleep(0.02)  # polling interval of a deadline loop
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    moments.disarm()
    assert moments.state_of(proc.pid) == "apply"


def test_a_released_process_leaves_its_window(tmp_path):
    moments = Moments(tmp_path)
    proc = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, "EIGENLOOP_FAULT_HOOK": str(tmp_path)},
                          timeout=60)
    assert proc.returncode == 0
    assert moments.state_of(-1) == "other" and moments.seen == {("apply", "enter"): 1, ("apply", "leave"): 1}


@pytest.mark.parametrize("n", [1, 10, 50])
def test_kill_times_cover_the_window(n):
    times = kill_times(random.Random(n), n, 100.0, 200.0)
    assert times == sorted(times) and 100.0 <= times[0] and times[-1] < 200.0
    assert max(tenths([(t - 100.0) / 100.0 for t in times])) <= max(1, -(-n // 10))
    assert times[-1] >= 100.0 + 100.0 * (n - 1) / n  # the last one in the last slot


def test_victims_are_balanced():
    v = victim_list(random.Random(1), 10, ["daemon", "streams", "sink"])
    assert sorted(v.count(x) for x in ("daemon", "streams", "sink")) == [3, 3, 4]
