"""The analytics sink: every topic → batched ClickHouse inserts, exactly once in effect.

Delivery from Kafka is at least once: offsets are committed only after the batch's inserts
returned, so a crash between the two re-delivers the batch. Before inserting, the sink asks
each table which of the batch's event_ids it already holds and skips those (and duplicates
within the batch). That makes re-delivery harmless for the base tables *and* for the
materialised-view aggregates, which count inserts. Only one sink writes a chdb path (see
``daemon.ops.analytics.access``); on a server, run one sink per consumer group.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiokafka import ConsumerRecord
from prometheus_client import Counter, Gauge

from daemon.eventlog import DeadLetterer, EventProducer, GroupReader
from daemon.logging import get_logger
from daemon.ops.analytics.ddl import BY_RECORD, KAFKA_COLUMNS, TableSpec
from daemon.ops.analytics.store import Store
from schemas import Event
from schemas.settings import Settings
from schemas.topics import CATALOGUE

log = get_logger(__name__)

DEFAULT_GROUP = "eigenloop-analytics-sink"
LAG_INTERVAL_S = 2.0

ROWS = Counter("eigenloop_analytics_rows_total", "Rows the analytics sink inserted", ["table"])
DUPLICATES = Counter("eigenloop_analytics_duplicates_total", "Events skipped as already stored", ["table"])
LAG = Gauge("eigenloop_analytics_lag", "Records behind the end of the partition", ["topic", "partition"])


@dataclass
class SinkStats:
    inserted: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    batches: int = 0
    unmapped: int = 0

    @property
    def total(self) -> int:
        return sum(self.inserted.values())


class _Batch:
    """Events of one flush, grouped by table, with their Kafka coordinates."""

    def __init__(self) -> None:
        self.by_table: dict[str, tuple[TableSpec, list[tuple[ConsumerRecord, Event]]]] = {}
        self.size = 0
        self.started = 0.0
        self.ends: dict[Any, int] = {}  # TopicPartition -> offset after the last record seen

    def seen(self, rec: ConsumerRecord) -> None:
        from aiokafka import TopicPartition

        if not self.ends:
            self.started = time.monotonic()
        self.ends[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1

    def add(self, spec: TableSpec, rec: ConsumerRecord, ev: Event) -> None:
        self.by_table.setdefault(spec.name, (spec, []))[1].append((rec, ev))
        self.size += 1


def rows_for(spec: TableSpec, items: list[tuple[ConsumerRecord, Event]]) -> tuple[list[list[Any]], list[str]]:
    cols = spec.columns()
    names = [c.name for c in cols] + [n for n, _ in KAFKA_COLUMNS]
    getters = [c.get for c in cols]
    rows = [[g(ev) for g in getters] + [rec.topic, rec.partition, rec.offset] for rec, ev in items]
    return rows, names


class Sink:
    """Consumes ``topics`` as ``group_id`` and writes to ``store`` (already migrated).

    ``before_commit`` runs after a batch's inserts and before its offset commit; fault tests
    use it to stop a sink at the one moment that matters for duplicates.
    """

    def __init__(self, settings: Settings, store: Store, *, group_id: str = DEFAULT_GROUP,
                 topics: list[str] | None = None,
                 before_commit: Callable[[SinkStats], Awaitable[None]] | None = None):
        self._settings = settings
        self._store = store
        self._db = store.database
        self._group_id = group_id
        self._topics = topics or [t.name for t in CATALOGUE]
        self._before_commit = before_commit
        # chdb handles are used from one thread at a time; one worker keeps inserts ordered too
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-sink")
        self.stats = SinkStats()
        self._last_lag = 0.0
        self._committed: dict[Any, int] = {}  # TopicPartition -> next offset, as committed

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(self, stop: asyncio.Event) -> SinkStats:
        a = self._settings.analytics
        async with EventProducer(self._settings) as producer:
            dead = DeadLetterer(producer, source="analytics-sink")
            reader = GroupReader(self._settings, self._topics, self._group_id, dead)
            await reader.start()
            try:
                batch = _Batch()
                poll_ms = max(50, int(a.flush_s * 1000 / 2))
                async for items in reader.batches(timeout_ms=poll_ms):
                    for rec, ev in items:
                        batch.seen(rec)
                        spec = BY_RECORD.get(type(ev))
                        if spec is None:
                            # a record type newer than this sink's tables: kept, with the reason
                            await dead(rec, f"analytics: no table for record type {ev.type}", "UnmappedRecord")
                            self.stats.unmapped += 1
                            continue
                        batch.add(spec, rec, ev)
                    # the batch may hold no rows (all unmapped): its offsets still need committing
                    due = bool(batch.ends) and (batch.size >= a.batch_size or stop.is_set()
                                                or time.monotonic() - batch.started >= a.flush_s)
                    if due:
                        await self._flush(batch)
                        await self._commit(reader, batch.ends)
                        batch = _Batch()
                    await self._record_lag(reader)
                    if stop.is_set():
                        break
            finally:
                await reader.stop()
                self._pool.shutdown(wait=True)
        return self.stats

    async def _flush(self, batch: _Batch) -> None:
        for name, (spec, items) in batch.by_table.items():
            fresh = await self._call(self._dedupe, spec, items)
            skipped = len(items) - len(fresh)
            if skipped:
                DUPLICATES.labels(name).inc(skipped)
                self.stats.duplicates += skipped
            if not fresh:
                continue
            rows, names = rows_for(spec, fresh)
            await self._call(self._store.insert, f"{self._db}.{name}", rows, names)
            ROWS.labels(name).inc(len(rows))
            self.stats.inserted[name] = self.stats.inserted.get(name, 0) + len(rows)
        self.stats.batches += 1

    def _dedupe(self, spec: TableSpec, items: list[tuple[ConsumerRecord, Event]]) -> list[tuple[ConsumerRecord, Event]]:
        cols = {c.name: c.get for c in spec.columns()}
        identity = cols[spec.identity]
        unique: dict[str, tuple[ConsumerRecord, Event]] = {}
        for rec, ev in items:
            unique.setdefault(identity(ev), (rec, ev))
        params: dict[str, Any] = {"ids": list(unique)}
        where = ""
        if spec.identity == "event_id":
            # id_time is a function of event_id: its bounds prune partitions and key ranges
            times = [cols["id_time"](ev) for _, ev in unique.values()]
            params.update(lo=min(times), hi=max(times))
            where = ("id_time BETWEEN fromUnixTimestamp64Milli({lo:Int64}) AND fromUnixTimestamp64Milli({hi:Int64}) "
                     "AND ")
        r = self._store.query(
            f"SELECT {spec.identity} FROM {self._db}.{spec.name} WHERE {where}{spec.identity} IN {{ids:Array(String)}}",
            params)
        present = {row[0] for row in r.rows}
        return [item for key, item in unique.items() if key not in present]

    async def _commit(self, reader: GroupReader, batch_ends: dict[Any, int]) -> None:
        if self._before_commit is not None:
            await self._before_commit(self.stats)
        await reader.commit()
        self._committed.update(batch_ends)

    async def _record_lag(self, reader: GroupReader) -> None:
        now = time.monotonic()
        if now - self._last_lag < LAG_INTERVAL_S:
            return
        self._last_lag = now
        consumer = reader.consumer
        rows = []
        ts_ms = int(time.time() * 1000)
        for tp in sorted(consumer.assignment()):
            end = consumer.highwater(tp)
            if end is None:
                continue  # nothing fetched from this partition yet: its end is unknown
            done = self._committed.get(tp)
            if done is None:
                # not written by this sink yet: ask the group coordinator once
                done = self._committed[tp] = await consumer.committed(tp) or 0
            lag = max(0, end - done)
            LAG.labels(tp.topic, str(tp.partition)).set(lag)
            rows.append([ts_ms, self._group_id, tp.topic, tp.partition, done, end, lag])
        if rows:
            await self._call(self._store.insert, f"{self._db}.consumer_lag", rows,
                             ["ts", "consumer_group", "topic", "partition", "committed", "end_offset", "lag"])


async def run_sink(settings: Settings, stop: asyncio.Event, *, group_id: str = DEFAULT_GROUP, serve: bool = True,
                   before_commit: Callable[[SinkStats], Awaitable[None]] | None = None,
                   on_ready: Callable[[], None] | None = None) -> SinkStats:
    """Own the analytics store, migrate it, and sink until ``stop`` is set.

    Meant to run inside ``eigenloop run`` as one task; ``serve`` publishes the read-only query
    server so ``eigenloop analytics`` keeps working while this process holds the chdb path.
    """
    from daemon.ops.analytics.access import open_for_sink
    from daemon.ops.analytics.migrations import migrate

    owner = await asyncio.to_thread(open_for_sink, settings, serve=serve)
    try:
        applied = await asyncio.to_thread(migrate, owner.store, owner.store.database)
        if applied:
            log.info("analytics.migrations_applied", applied=applied)
        sink = Sink(settings, owner.store, group_id=group_id, before_commit=before_commit)
        if on_ready is not None:
            on_ready()
        return await sink.run(stop)
    finally:
        await asyncio.to_thread(owner.close)
