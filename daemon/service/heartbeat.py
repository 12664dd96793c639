"""Is the daemon alive, as opposed to merely answering HTTP?

A liveness probe that the event loop answers proves the loop turns *now*; it cannot tell that
the loop was frozen for a minute by a synchronous call, nor that the learner's task died while
the HTTP server kept serving. ``LoopHeartbeat`` measures the first (how late the loop wakes a
sleeping task, exported as a metric); ``liveness`` combines it with the tasks the process
exists for and the resident model into the answer ``/healthz`` gives.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from daemon.service import metrics


class LoopHeartbeat:
    """A task that sleeps ``tick_s`` at a time and records how late each wake-up was.

    ``stalled_for`` is the time since the last wake-up: a loop blocked by synchronous work
    (a torch call not sent to a thread, a blocking read) shows here long before a probe times out
    on a busy node, and a heartbeat task that died shows as a stall that only grows."""

    def __init__(self, tick_s: float = 0.5, window: int = 120):
        self.tick_s = tick_s
        self.window = window  # wake-ups the lag maximum covers (a minute at the default tick)
        self.last_tick = time.monotonic()
        self._lags: list[float] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.last_tick = time.monotonic()
        self._task = asyncio.create_task(self._beat(), name="loop-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def running(self) -> bool:
        return task_alive(self._task)

    @property
    def lag_s(self) -> float:
        return max(self._lags, default=0.0)

    def stalled_for(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last_tick

    async def _beat(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.tick_s)  # the measurement itself: how late does this wake?
            self.last_tick = time.monotonic()
            self._lags.append(max(0.0, self.last_tick - asked - self.tick_s))
            if len(self._lags) > self.window:
                del self._lags[0]
            metrics.LOOP_LAG.set(self.lag_s)


def task_alive(task: asyncio.Task | None) -> bool:
    """Started and not ended: a task that raised is dead even while the process serves HTTP."""
    return task is not None and not task.done()


def model_loaded(model: Any) -> bool:
    """The resident model has weights (not a placeholder): at least one parameter tensor."""
    return model is not None and next(iter(model.parameters()), None) is not None


def liveness(heartbeat: LoopHeartbeat, tasks: dict[str, bool], model_ok: bool, stall_s: float) -> dict[str, Any]:
    """The /healthz body: ``ok`` only when the loop has turned within ``stall_s``, every task
    the process exists for is alive, and the model is loaded. Each failing part is named, so a
    restarted pod's last probe says why."""
    stalled = heartbeat.stalled_for()
    loop_ok = heartbeat.running and stalled <= stall_s
    failing = [name for name, alive in tasks.items() if not alive]
    if not loop_ok:
        failing.insert(0, "event_loop")
    if not model_ok:
        failing.append("model")
    return {"ok": not failing, "failing": failing, "loop_lag_s": round(heartbeat.lag_s, 3),
            "loop_stalled_s": round(stalled, 3), "tasks": tasks, "model_loaded": model_ok}
