"""Which of the daemon's own groups the stream processor must have closed by now, and the order
in which the learner applies them: the learner's side of a loop-paced replay.

The stream processor scores a candidate once a market record of its symbol *after* the
candidate's horizon end has been seen (``streams.engine``), and closes a group when every
candidate is scored. The daemon produced those very records, so it knows, frame by frame, which
groups that makes final. Applying groups in that order (frame, then the order the groups were
opened), and sampling a decision only after every group due by then is applied, makes the
weights at every decision a function of the input alone: the worker's speed and the order in
which its partitions emit stop mattering. ``end()`` (the replay's end) makes every open group
due, in opening order.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import Iterable


class DueGroups:
    def __init__(self) -> None:
        self._open: dict[str, list[tuple[int, int, str]]] = {}  # sk -> heap of (last horizon end, seq, id)
        self._watermark: dict[str, int] = {}
        self._seq = 0
        self._known: set[str] = set()  # opened here and not applied yet
        self.due: deque[str] = deque()  # the apply order
        self._settled = asyncio.Event()
        self._settled.set()

    def opened(self, group_id: str, sk: str, horizon_ends: Iterable[int]) -> None:
        """A group's candidates were emitted (``sk`` = ``exchange|symbol``, as the engine keys it)."""
        self._seq += 1
        self._known.add(group_id)
        heapq.heappush(self._open.setdefault(sk, []), (max(horizon_ends), self._seq, group_id))
        self._sweep(sk)

    def observe(self, sk: str, ts_event: int) -> None:
        """A market record (trade, book ticker, watermark) the engine will also see."""
        if ts_event > self._watermark.get(sk, 0):
            self._watermark[sk] = ts_event
            self._sweep(sk)

    def _sweep(self, sk: str) -> None:
        heap, wm = self._open.get(sk), self._watermark.get(sk, 0)
        while heap and heap[0][0] < wm:  # strictly after the horizon end, as the engine scores
            self._push_due(heapq.heappop(heap)[2])

    def _push_due(self, group_id: str) -> None:
        self.due.append(group_id)
        self._settled.clear()

    def end(self) -> None:
        """The input ended: every open group is due, in the order they were opened."""
        rest = [item for heap in self._open.values() for item in heap]
        for _, _, gid in sorted(rest, key=lambda item: item[1]):
            self._push_due(gid)
        self._open.clear()

    def knows(self, group_id: str) -> bool:
        return group_id in self._known

    def head(self) -> str | None:
        return self.due[0] if self.due else None

    def applied(self, group_id: str) -> None:
        if self.due and self.due[0] == group_id:
            self.due.popleft()
            self._known.discard(group_id)
        if not self.due:
            self._settled.set()

    def watermarks(self) -> dict[str, int]:
        """``sk`` -> the newest market time seen: where each symbol's input stands."""
        return dict(self._watermark)

    @property
    def open_count(self) -> int:
        return sum(len(h) for h in self._open.values())

    def settled(self) -> bool:
        """Every group due so far has been applied."""
        return not self.due

    async def wait_settled(self, timeout: float | None = None) -> bool:
        """Until every due group is applied; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
            return True
        except TimeoutError:
            return False
