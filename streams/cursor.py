"""Which input records an agent processes, by offset: the guard against a consumer that skips.

Faust acks and commits what its consumer *handed out*, and it can hand an agent a partition's
records with a hole: a record fetched in a consumer-group generation that has just ended is
skipped by the stream, and the client's position is already past it (seen here at a fresh start:
a partition's offset 0 never reached the agent). A hole is then acked as a "gap" and committed.
Our inputs are neither compacted nor transactional, so every offset is a record and a hole is a
loss. Records can also vanish under the consumer: retention deletes a partition's oldest
segments, and the client then resets to the new first offset.

So each agent keeps its own cursor per input partition: the next offset it must process.

- a record *at* the cursor is processed and moves it on;
- a record *below* it was processed before (a re-delivery) and is skipped;
- a record *above* it means the consumer skipped some: it is not processed, and the agent seeks
  the consumer back to the cursor, again every ``reseek_after_s`` until the record arrives (the
  rest of a batch fetched before the seek can still be handed out after it, and Faust then
  drops the re-fetched records as already read: a second seek, once that batch is out, works);
- a cursor below the partition's first offset (records deleted before they were processed)
  moves to it, with an error log and a count: those records are gone.

The cursor is persisted in a changelog-backed table, but only offsets whose effects are on the
broker: the agent flushes the producer (state changelogs and outputs) and then writes what it
had processed before the flush (``snapshot`` -> flush -> ``persist``). After a restart the cursor
starts there (or at the partition's first offset on a fresh start), whatever offset Faust
committed: records before it are skipped exactly, records from it on are processed again (the
engine drops what its state already holds). Pure bookkeeping: the agent does the I/O.

With each cursor the agent can persist a *mark* (``mark_key``): for a market partition, the
source offset of the oldest quote its in-memory book held at the snapshot. A restart rebuilds
the book by reading the log from the mark up to the cursor (``streams.rebuild``).
"""

from __future__ import annotations

from typing import MutableMapping

TopicPartition = tuple[str, int]
PROCESS, REPLAYED, GAP = "process", "replayed", "gap"


def cursor_key(tp: TopicPartition) -> str:
    return f"{tp[0]}|{tp[1]}"


def mark_key(tp: TopicPartition) -> str:
    return f"{tp[0]}|{tp[1]}|book"


class InputCursor:
    def __init__(self, store: MutableMapping, *, persist_every_s: float = 1.0, persist_every_n: int = 1000,
                 reseek_after_s: float = 1.0):
        self.store = store  # cursor_key(tp) -> next offset whose predecessors are all on the broker
        self.persist_every_s, self.persist_every_n = persist_every_s, persist_every_n
        self.reseek_after_s = reseek_after_s
        self.next: dict[TopicPartition, int] = {}
        self.counters: dict[str, int] = {"refused_past_hole": 0, "seeks": 0, "replayed_skipped": 0}
        self._persisted_at: dict[int, float] = {}  # partition number -> when its cursors were last written
        self._since_persist: dict[int, int] = {}  # partition number -> records processed since
        self._seek: dict[TopicPartition, tuple[int, float]] = {}  # tp -> (target, when asked)

    # ---- per record ---------------------------------------------------------------------
    def started(self, tp: TopicPartition) -> bool:
        return tp in self.next

    def resume_at(self, tp: TopicPartition, earliest: int) -> int:
        """Where ``tp`` resumes: at the persisted cursor, or at the partition's first offset
        (``earliest``: retention may have deleted older ones)."""
        saved = self.store.get(cursor_key(tp))
        return earliest if saved is None else max(int(saved), earliest)

    def saved_mark(self, tp: TopicPartition) -> int | None:
        mark = self.store.get(mark_key(tp))
        return None if mark is None else int(mark)

    def start(self, tp: TopicPartition, earliest: int) -> int:
        """First record of ``tp`` since this process started: from now on records of ``tp``
        are checked against the cursor (``resume_at``)."""
        self.next[tp] = self.resume_at(tp, earliest)
        return self.next[tp]

    def skip_to(self, tp: TopicPartition, earliest: int) -> int | None:
        """The partition's first offset is past the cursor: retention deleted records before they
        were processed. They are gone; move on (returns the first lost offset, or None)."""
        want = self.next.get(tp)
        if want is None or want >= earliest:
            return None
        self.next[tp] = earliest
        self._seek.pop(tp, None)
        self.counters["deleted_before_processed"] = self.counters.get("deleted_before_processed", 0) + earliest - want
        return want

    def forget(self, tps) -> None:
        """Partitions taken away by a rebalance: if one comes back, it resumes from the store."""
        for tp in tps:
            self.next.pop(tp, None)
            self._seek.pop(tp, None)

    def check(self, tp: TopicPartition, offset: int) -> str:
        want = self.next[tp]
        if offset == want:
            return PROCESS
        if offset < want:
            self.counters["replayed_skipped"] += 1
            return REPLAYED
        self.counters["refused_past_hole"] += 1
        return GAP

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.next[tp] = offset + 1
        self._seek.pop(tp, None)
        self._since_persist[tp[1]] = self._since_persist.get(tp[1], 0) + 1

    def seek_target(self, tp: TopicPartition, now: float) -> int | None:
        """Where to seek ``tp`` now, or None if a seek there was asked less than
        ``reseek_after_s`` ago (records already fetched past the hole keep arriving meanwhile)."""
        want = self.next.get(tp)
        if want is None:
            return None
        asked = self._seek.get(tp)
        if asked is not None and asked[0] == want and now - asked[1] < self.reseek_after_s:
            return None
        self._seek[tp] = (want, now)
        self.counters["seeks"] += 1
        return want

    def overdue(self, now: float) -> list[TopicPartition]:
        """Partitions still waiting for the record a seek asked for, ``reseek_after_s`` later."""
        return [tp for tp, (target, asked) in self._seek.items()
                if self.next.get(tp) == target and now - asked >= self.reseek_after_s]

    # ---- persistence --------------------------------------------------------------------
    def persist_due(self, partition: int, now: float) -> bool:
        """Every ``persist_every_s`` or ``persist_every_n`` records of a partition number: a
        stale cursor costs only re-processing after a restart, a write costs a producer flush."""
        if (now - self._persisted_at.get(partition, float("-inf")) < self.persist_every_s
                and self._since_persist.get(partition, 0) < self.persist_every_n):
            return False
        return any(tp[1] == partition and self.store.get(cursor_key(tp)) != n for tp, n in self.next.items())

    def snapshot(self, partition: int) -> dict[TopicPartition, int]:
        """The cursors of one partition number, taken *before* the producer flush that makes
        everything below them durable."""
        return {tp: n for tp, n in self.next.items() if tp[1] == partition}

    def persist(self, snap: dict[TopicPartition, int], partition: int, now: float,
                marks: dict[TopicPartition, int | None] | None = None) -> None:
        """Write a flushed snapshot, with the marks taken at the same moment. Only from a record
        of the same partition number: the table write lands in that changelog partition, which
        is what a restart of it recovers."""
        for tp, n in snap.items():
            if self.store.get(cursor_key(tp)) != n:
                self.store[cursor_key(tp)] = n
        # after the cursors: a kill between the two writes leaves the previous mark, which is at
        # or below this one (the book's oldest quote only moves forward), so a rebuild reads more
        for tp, mark in (marks or {}).items():
            if self.store.get(mark_key(tp)) != mark:
                self.store[mark_key(tp)] = mark
        self._persisted_at[partition] = now
        self._since_persist[partition] = 0

    def positions(self) -> dict[TopicPartition, int]:
        """Last processed offset per partition (for the stall watch)."""
        return {tp: n - 1 for tp, n in self.next.items()}
