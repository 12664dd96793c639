"""Event time per ``exchange|symbol`` for the engine (``streams.engine``): the market watermark,
and for idle streams an estimate that advances with the wall clock from the last event's
``ts_ingest``. Derived, in-memory state."""

from __future__ import annotations

from streams.state import LastEvent

MAX_LAG_NS = 1_000_000_000
SEED_IDLE_NS = 2_000_000_000  # after a restart, give the consumer this long to deliver a first event


class Clock:
    """Event time per ``sk``: watermark, and an idle estimate anchored on ``ts_ingest``.

    Derived state only (rebuilt from the next events, or seeded after a restart): persisting
    it would cost one changelog write per market event for nothing that cannot be recomputed.
    """

    def __init__(self, idle_after_s: float):
        self.idle_after_ns = round(idle_after_s * 1e9)
        self._wm: dict[str, int] = {}
        self._ref: dict[str, LastEvent] = {}

    def observe(self, sk: str, ts_event: int, ts_ingest: int, wall_ns: int) -> int:
        wm = self._wm.get(sk, 0)
        if ts_event > wm:
            wm = self._wm[sk] = ts_event
            self._ref[sk] = LastEvent(ts_event, ts_ingest, wall_ns)
        elif sk in self._ref:
            ref = self._ref[sk]
            self._ref[sk] = LastEvent(ref.ts_event, ref.ts_ingest, wall_ns)  # still active: not idle
        else:
            self._ref[sk] = LastEvent(ts_event, ts_ingest, wall_ns)
        return wm

    def watermark(self, sk: str) -> int:
        return self._wm.get(sk, 0)

    def seed(self, sk: str, ts_event: int, wall_ns: int) -> None:
        """After a restart with no event yet: let idle time run from now, at 1x."""
        if sk not in self._ref:
            self._wm.setdefault(sk, ts_event)
            self._ref[sk] = LastEvent(ts_event, wall_ns, wall_ns)

    def idle_now(self, sk: str, wall_ns: int, caught_up: bool = False) -> int | None:
        """Estimated event time now if ``sk`` has been idle long enough, else None.

        Live, ``ts_ingest`` tracks event time, so event time now is the last event's time plus
        the wall time since it was *ingested*. How far behind ingest we saw it (our lag) counts
        for at most ``MAX_LAG_NS``: a consumer catching up on a backlog must not jump ahead.
        """
        ref = self._ref.get(sk)
        if ref is None:
            return None
        ts_event, ts_ingest, seen = ref.ts_event, ref.ts_ingest, ref.seen_wall_ns
        idle = wall_ns - seen
        if idle < (self.idle_after_ns if seen != ts_ingest else max(self.idle_after_ns, SEED_IDLE_NS)):
            return None
        lag = max(seen - ts_ingest, 0)
        if not caught_up:
            lag = min(lag, MAX_LAG_NS)
        return max(self._wm.get(sk, 0), ts_event + idle + lag)
