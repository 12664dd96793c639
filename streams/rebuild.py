"""Market state from the log: after a start or a partition assignment, read the market
partition again up to the agent's input cursor, so the in-memory book is what it was when that
cursor was persisted.

The book is a pure function of the recent market log, which Kafka already holds, so it has no
changelog (one changelog record per quote was the worker's main write cost, and its replay the
main restart cost). Where to start reading:

- the *book mark* persisted with the cursor (``streams.cursor``): the source offset of the oldest
  quote the book held when the cursor was written. Reading from there to the cursor restores
  exactly that book, also when expiry was held back for a candidate backlog (``hold_expiry``),
  so a restart scores every candidate on the same quotes as an uninterrupted worker;
- with no mark (the cursor was persisted while the book held no quote of that partition): from
  the record timestamp of the last processed record, less ``market_window_s`` and a margin of as
  much again (``offsets_for_times``; record timestamps are ``ts_ingest``, which may trail event
  time);
- never below the partition's first offset, never at or past the cursor.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

Feed = Callable[..., None]  # SymbolEngine.rebuild_record: (raw, *, topic, partition, offset)


async def rebuild_partition(client_kw: dict, tp: tuple[str, int], cursor: int, earliest: int, mark: int | None,
                            window_s: float, feed: Feed) -> tuple[int, int]:
    """Feed the market records of ``tp`` from the start (see module docstring) up to ``cursor``
    (exclusive) to ``feed``. Returns (first offset read, records read)."""
    if cursor <= earliest:
        return cursor, 0  # nothing processed yet: the agent builds the book as it goes
    part = TopicPartition(*tp)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **client_kw)
    await consumer.start()
    t = time.monotonic()
    try:
        consumer.assign([part])
        start = mark if mark is not None else await _window_start(consumer, part, cursor, window_s)
        start = min(max(start, earliest), cursor)
        consumer.seek(part, start)
        n, at = 0, start
        while at < cursor:
            batch = await consumer.getmany(part, timeout_ms=1000, max_records=10000)
            for m in batch.get(part, ()):
                if m.offset >= cursor:
                    at = cursor
                    break
                feed(m.value, topic=tp[0], partition=tp[1], offset=m.offset)
                n, at = n + 1, m.offset + 1
        # one line per partition and start, at warning so the default level shows what a restart cost
        log.warning("market state of %s:%d rebuilt from offsets %d..%d (%d records) in %.2f s", tp[0], tp[1], start,
                 cursor - 1, n, time.monotonic() - t)
        return start, n
    finally:
        await consumer.stop()


async def _window_start(consumer: AIOKafkaConsumer, part: TopicPartition, cursor: int, window_s: float) -> int:
    """The first offset whose record timestamp is within twice ``window_s`` of the last processed
    record's (the window plus a margin as large)."""
    consumer.seek(part, cursor - 1)
    last = None
    while last is None:
        batch = await consumer.getmany(part, timeout_ms=1000, max_records=1)
        last = next(iter(batch.get(part, ())), None)
    target_ms = last.timestamp - round(2 * window_s * 1000)
    found = await consumer.offsets_for_times({part: max(target_ms, 0)})
    hit = found.get(part)
    return hit.offset if hit is not None else cursor
