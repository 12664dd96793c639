"""Health of the streams worker: which input partitions are stuck, and the HTTP probes.

A partition is *stalled* when input waits (processed offset + 1 < high watermark) and the worker
has not processed a record of it for ``stall_after_s``. It is rare but real: a Faust/aiokafka
worker can stop being handed records for one partition while its fetcher, queues and flow
control all look healthy (seen in long benchmark runs on a loaded 2-core machine; cause not
found). Delivery is at-least-once, so the remedy is a restart: the worker exits when a stall
outlasts ``stall_exit_s``, and its supervisor (``eigenloop run``, Kubernetes) starts it again
from the committed offsets. ``/healthz`` fails in the same case, so a liveness probe agrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

TopicPartition = tuple[str, int]


@dataclass
class StallWatch:
    stall_after_s: float = 10.0
    _last: dict[TopicPartition, tuple[int, float]] = field(default_factory=dict)  # tp -> (offset, when it moved)

    def observe(self, processed: dict[TopicPartition, int], highwater: Callable[[TopicPartition], int | None],
                now: float) -> dict[TopicPartition, dict]:
        """Stalled partitions, each with its processed offset, high watermark and seconds stuck."""
        out = {}
        for tp, done in processed.items():
            last = self._last.get(tp)
            if last is None or last[0] != done:
                self._last[tp] = (done, now)
                continue
            high = highwater(tp)
            stuck = now - last[1]
            if high is not None and done + 1 < high and stuck >= self.stall_after_s:
                out[tp] = {"processed": done, "highwater": high, "stuck_s": round(stuck, 1)}
            elif high is not None and done + 1 >= high:
                self._last[tp] = (done, now)  # caught up: idle is not stuck
        return out


def health(ready: bool, stalled: dict[TopicPartition, dict], exit_after_s: float | None) -> tuple[int, dict, int, dict]:
    """(status, body) for /healthz and for /readyz."""
    worst = max((s["stuck_s"] for s in stalled.values()), default=0.0)
    stalled_json = {f"{t}:{p}": s for (t, p), s in stalled.items()}
    dead = exit_after_s is not None and worst >= exit_after_s
    live = (503 if dead else 200, {"status": "stalled" if dead else "ok", "stalled": stalled_json})
    ok = ready and not stalled
    readiness = (200 if ok else 503, {"status": "ready" if ok else ("stalled" if stalled else "recovering"),
                                      "stalled": stalled_json})
    return live[0], live[1], readiness[0], readiness[1]
