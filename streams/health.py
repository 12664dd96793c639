"""Health of the streams worker: which input partitions are stuck, and the HTTP probes.

A partition is *stalled* when input waits (processed offset + 1 < high watermark) and the worker
has not processed a record of it for ``stall_after_s``: the consumer's position may be past
records the agent never got (``streams.cursor``). The timer then seeks the partition back to the
agent's cursor, and ``/readyz`` fails.

A partition read to the end is idle, never stalled, however long it stays quiet. A partition can
also wait its turn: in catch-up one consumer hands out a backlog of market records, and the
router's and the internal topic's records wait behind it (seen after a 20x replay: partitions
untouched for 30 s and more while the worker processed thousands of records a second). So the
worker is *wedged*, exits (code 75) for its supervisor (``eigenloop run``, Kubernetes) to start
it again, and fails ``/healthz``, only when a stall outlasts ``stall_exit_s`` *and* no input
record at all was processed for as long: a worker that is working through its input is behind,
and a restart would only make it start that work again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

TopicPartition = tuple[str, int]
STALL_EXIT_CODE = 75  # EX_TEMPFAIL: try again (what supervisors see when a stalled worker exits)


@dataclass
class StallWatch:
    stall_after_s: float = 10.0
    _last: dict[TopicPartition, tuple[int, float]] = field(default_factory=dict)  # tp -> (offset, when it moved)
    progress_at: float | None = None  # when any input partition last moved (first observation until then)

    def observe(self, processed: dict[TopicPartition, int], highwater: Callable[[TopicPartition], int | None],
                now: float) -> dict[TopicPartition, dict]:
        """Stalled partitions, each with its processed offset, high watermark and seconds stuck."""
        out = {}
        if self.progress_at is None:
            self.progress_at = now
        for tp, done in processed.items():
            last = self._last.get(tp)
            if last is None or last[0] != done:
                if last is not None:
                    self.progress_at = now
                self._last[tp] = (done, now)
                continue
            high = highwater(tp)
            stuck = now - last[1]
            if high is not None and done + 1 < high and stuck >= self.stall_after_s:
                out[tp] = {"processed": done, "highwater": high, "stuck_s": round(stuck, 1)}
            elif high is not None and done + 1 >= high:
                self._last[tp] = (done, now)  # caught up: idle is not stuck
        return out


def wedged(stalled: dict[TopicPartition, dict], no_progress_s: float, exit_after_s: float | None) -> bool:
    """Exit (and fail liveness)? Only if a partition is stalled and nothing at all was processed,
    both for ``exit_after_s``: a stall while other input is processed is a backlog, not a hang."""
    worst = max((s["stuck_s"] for s in stalled.values()), default=0.0)
    return exit_after_s is not None and min(worst, no_progress_s) >= exit_after_s


def health(ready: bool, stalled: dict[TopicPartition, dict], no_progress_s: float,
           exit_after_s: float | None) -> tuple[int, dict, int, dict]:
    """(status, body) for /healthz and for /readyz."""
    stalled_json = {f"{t}:{p}": s for (t, p), s in stalled.items()}
    dead = wedged(stalled, no_progress_s, exit_after_s)
    live = (503 if dead else 200, {"status": "stalled" if dead else "ok", "stalled": stalled_json})
    ok = ready and not stalled
    readiness = (200 if ok else 503, {"status": "ready" if ok else ("stalled" if stalled else "recovering"),
                                      "stalled": stalled_json})
    return live[0], live[1], readiness[0], readiness[1]


@dataclass
class WorkerHealth:
    """What the worker's timer learns on each tick and what its probes answer from."""

    stall_after_s: float
    exit_after_s: float | None
    ready: bool = False
    stalled: dict[TopicPartition, dict] = field(default_factory=dict)
    no_progress_s: float = 0.0  # since any input partition was last processed, at the last observation
    # the broker's end offsets, asked every stall_after_s / 2: the consumer's high watermark only
    # moves with its fetches, so a consumer that stopped fetching looks caught up by it
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    _asked_at: float = float("-inf")
    _reported_at: float = float("-inf")

    def __post_init__(self) -> None:
        self._watch = StallWatch(self.stall_after_s)

    def wants_ends(self, now: float) -> bool:
        if now - self._asked_at < self.stall_after_s / 2:
            return False
        self._asked_at = now
        return True

    def highwater(self, tp: TopicPartition, local: int | None) -> int | None:
        return max((v for v in (local, self.ends.get(tp)) if v is not None), default=None)

    def observe(self, processed: dict[TopicPartition, int], highwater: Callable[[TopicPartition], int | None],
                now: float) -> dict[TopicPartition, dict]:
        self.stalled = self._watch.observe(processed, highwater, now)
        since = self._watch.progress_at
        self.no_progress_s = round(now - (now if since is None else since), 1)
        return self.stalled

    def should_report(self, now: float, every_s: float = 10.0) -> bool:
        if now - self._reported_at < every_s:
            return False
        self._reported_at = now
        return True

    def exit_due(self) -> bool:
        return wedged(self.stalled, self.no_progress_s, self.exit_after_s)

    def probes(self) -> tuple[int, dict, int, dict]:
        return health(self.ready, self.stalled, self.no_progress_s, self.exit_after_s)
