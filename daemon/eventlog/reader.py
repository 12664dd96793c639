"""Reading the log: consumer groups, ranges by offset or timestamp, and dead-lettering.

Nothing is dropped silently: a record that does not decode becomes a ``DeadLetter`` on the
dead-letter topic with the reason, the dead-letter counter moves, and reading goes on.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterable, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from daemon.eventlog import metrics
from daemon.eventlog.connection import client_kwargs, physical
from daemon.eventlog.producer import EventProducer
from schemas import DeadLetter, DecodeError, Event, decode, deterministic_event_id
from schemas.settings import Settings


class Position(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class DeadLetterer:
    """Turns an undecodable record into a DeadLetter on the dead-letter topic."""

    def __init__(self, producer: EventProducer, source: str = "eventlog"):
        self._producer = producer
        self._source = source
        self.count = 0

    async def __call__(self, record: ConsumerRecord, reason: str, error_type: str = "DecodeError") -> DeadLetter:
        # the id is derived from the record's coordinates: a consumer that crashes and reads the
        # same bad record again writes the same dead letter, which consumers dedupe
        dl = DeadLetter.from_input(record.value, source_topic=record.topic, reason=reason, error_type=error_type,
                                   partition=record.partition, offset=record.offset, source=self._source,
                                   key=record.topic, event_id=deterministic_event_id(
                                       record.timestamp if record.timestamp and record.timestamp > 0 else 0,
                                       "deadletter", record.topic, record.partition, record.offset))
        await self._producer.send_and_wait("deadletter", dl)
        self.count += 1
        metrics.DEAD_LETTERS.labels(self._source).inc()
        return dl


def decode_or_none(record: ConsumerRecord) -> tuple[Event | None, str | None]:
    try:
        return decode(record.value), None
    except DecodeError as e:
        return None, e.reason


class GroupReader:
    """A consumer-group reader of typed events with manual commits.

    Delivery: at least once. ``commit()`` marks everything yielded so far; a restart resumes
    after the last commit. Ordering: per partition. Undecodable records are dead-lettered
    through ``dead_letter`` (required: dropping is not an option) and not yielded.
    """

    def __init__(self, settings: Settings, topics: Iterable[str], group_id: str,
                 dead_letter: DeadLetterer, *, auto_offset_reset: str = "earliest",
                 isolation_level: str = "read_uncommitted", **overrides: Any):
        self._topics = [physical(settings, t) for t in topics]
        kw = client_kwargs(settings)
        kw.update(group_id=group_id, enable_auto_commit=False, auto_offset_reset=auto_offset_reset,
                  isolation_level=isolation_level, max_poll_records=2000, fetch_max_bytes=16 * 1024 * 1024)
        kw.update(overrides)
        self.consumer = AIOKafkaConsumer(*self._topics, **kw)
        self._dead_letter = dead_letter

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def commit(self) -> None:
        await self.consumer.commit()

    async def batches(self, timeout_ms: int = 500) -> AsyncIterator[list[tuple[ConsumerRecord, Event]]]:
        """Yield lists of (record, event) as they arrive; empty lists on idle polls."""
        while True:
            got = await self.consumer.getmany(timeout_ms=timeout_ms)
            out: list[tuple[ConsumerRecord, Event]] = []
            for tp, records in got.items():
                for rec in records:
                    ev, reason = decode_or_none(rec)
                    if ev is None:
                        await self._dead_letter(rec, reason or "undecodable")
                        continue
                    out.append((rec, ev))
                if records:
                    metrics.CONSUMED.labels(tp.topic).inc(len(records))
            yield out


async def _partitions(consumer: AIOKafkaConsumer, name: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(name)
    if parts is None:
        # an unsubscribed consumer tracks no topics; metadata for this one must be asked for
        consumer._client.add_topic(name)
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(name)
    if not parts:
        raise LookupError(f"topic {name} does not exist (run `eigenloop topics ensure`)")
    return [TopicPartition(name, p) for p in sorted(parts)]


async def offsets_for_timestamp(settings: Settings, name: str, timestamp_ms: int) -> dict[int, int]:
    """First offset per partition whose timestamp is >= ``timestamp_ms`` (end offset if none)."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, physical(settings, name))
        found = await consumer.offsets_for_times({tp: timestamp_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        return {tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}
    finally:
        await consumer.stop()


async def read_range(settings: Settings, name: str, *, start_offsets: dict[int, int] | None = None,
                     start_timestamp_ms: int | None = None, end_offsets: dict[int, int] | None = None,
                     dead_letter: DeadLetterer | None = None, skip_undecodable: bool = False,
                     isolation_level: str = "read_committed") -> AsyncIterator[tuple[Position, Event]]:
    """Read ``name`` from offsets (default: the beginning) or a timestamp up to the end offsets
    captured when the read starts (or given), then stop. No consumer group, no commits.

    Undecodable records are dead-lettered when ``dead_letter`` is given, skipped when the caller
    says so explicitly (``skip_undecodable``: an audit that counts dead letters elsewhere), and
    otherwise raise ``DecodeError`` naming the position.
    """
    physical_name = physical(settings, name)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level=isolation_level, max_poll_records=5000)
    await consumer.start()
    try:
        tps = await _partitions(consumer, physical_name)
        consumer.assign(tps)
        if start_timestamp_ms is not None:
            found = await consumer.offsets_for_times({tp: start_timestamp_ms for tp in tps})
            ends_now = await consumer.end_offsets(tps)
            start_offsets = {tp.partition: (found[tp].offset if found.get(tp) else ends_now[tp]) for tp in tps}
        stop_at = end_offsets or {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
        # explicit offsets for every partition: seek_to_beginning only schedules a reset, which
        # can race with the consumer's own reset policy
        firsts = await consumer.beginning_offsets(tps)
        for tp in tps:
            begin = (start_offsets or {}).get(tp.partition)
            consumer.seek(tp, max(begin if begin is not None else 0, firsts[tp]))
        remaining = {tp for tp in tps if await consumer.position(tp) < stop_at.get(tp.partition, 0)}
        while remaining:
            got = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in got.items():
                for rec in records:
                    if rec.offset >= stop_at[tp.partition]:
                        break
                    ev, reason = decode_or_none(rec)
                    if ev is None:
                        if skip_undecodable:
                            continue
                        if dead_letter is None:
                            raise DecodeError(f"{tp.topic}[{tp.partition}]@{rec.offset}: {reason}")
                        await dead_letter(rec, reason or "undecodable")
                        continue
                    yield Position(tp.topic, tp.partition, rec.offset, rec.timestamp), ev
            for tp in list(remaining):
                # under read_committed, transaction markers occupy offsets: compare positions
                if await consumer.position(tp) >= stop_at.get(tp.partition, 0):
                    remaining.discard(tp)
    finally:
        await consumer.stop()
