"""Consume → process → produce in Kafka transactions (exactly-once effect).

Each poll's outputs and the consumed offsets commit atomically: after a crash, either both the
outputs and the offsets are visible (``read_committed``) or neither, so a restart reprocesses
the batch without duplicating its outputs downstream.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from daemon.eventlog.connection import client_kwargs, physical
from daemon.eventlog.producer import EventProducer
from daemon.eventlog.reader import DeadLetterer, decode_or_none
from schemas import Event
from schemas.settings import Settings

Handler = Callable[[Sequence[Event]], Awaitable[Iterable[tuple[str, Event]]]]


class TransactionalPipe:
    """Reads ``inputs`` as consumer group ``group_id`` and, per batch, commits ``handler``'s
    outputs (pairs of catalogue topic and event) together with the input offsets.

    ``transactional_id`` must be stable across restarts of the same logical processor: it is
    what fences a zombie predecessor.
    """

    def __init__(self, settings: Settings, inputs: Iterable[str], group_id: str, transactional_id: str,
                 handler: Handler, *, max_records: int = 1000):
        self._settings = settings
        self._group_id = group_id
        self._handler = handler
        self.producer = EventProducer(settings, transactional_id=transactional_id)
        kw = client_kwargs(settings)
        self.consumer = AIOKafkaConsumer(*[physical(settings, t) for t in inputs], **kw, group_id=group_id,
                                         enable_auto_commit=False, auto_offset_reset="earliest",
                                         isolation_level="read_committed", max_poll_records=max_records)
        self.dead_letter = DeadLetterer(self.producer, source=f"pipe:{group_id}")
        self.processed = 0

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    async def run_once(self, timeout_ms: int = 500) -> int:
        """Process one poll's worth of records in one transaction; returns how many were read."""
        got = await self.consumer.getmany(timeout_ms=timeout_ms)
        if not got:
            return 0
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        n = 0
        async with self.producer.raw.transaction():
            events: list[Event] = []
            for tp, records in got.items():
                for rec in records:
                    ev, reason = decode_or_none(rec)
                    if ev is None:
                        await self.dead_letter(rec, reason or "undecodable")
                    else:
                        events.append(ev)
                    n += 1
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
            for name, out in await self._handler(events):
                await self.producer.send(name, out)
            await self.producer.raw.send_offsets_to_transaction(offsets, self._group_id)
        self.processed += n
        return n

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.run_once()
