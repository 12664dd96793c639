"""The producer every eigenloop process writes events with.

Record timestamps are ``ts_ingest`` (see ``send``). Durability: idempotence on and ``acks=all``, so a retried batch is written once and an
acknowledged event survives the leader. Ordering: per key (the key picks the partition, and
idempotence keeps order across retries). Delivery is counted when the broker acknowledges.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from daemon.eventlog import metrics
from daemon.eventlog.connection import client_kwargs, topic
from schemas import Event, encode
from schemas.settings import Settings
from schemas.topics import BY_NAME

log = structlog.get_logger(__name__)


class EventProducer:
    """Typed events in, Kafka records out. ``start``/``stop`` bracket its life.

    ``send`` returns once the record is queued in the batch accumulator and gives back a
    future for its delivery; cancelling that future does not stop delivery. ``flush`` waits for
    everything queued so far. Topic names are catalogue names; the deployment prefix is added.
    """

    def __init__(self, settings: Settings, *, transactional_id: str | None = None, **overrides: Any):
        self._settings = settings
        kw = client_kwargs(settings)
        kw.update(
            acks="all", enable_idempotence=True, linger_ms=settings.kafka.linger_ms,
            max_batch_size=settings.kafka.max_batch_size, compression_type=None,
            request_timeout_ms=30000,
        )
        if transactional_id:
            kw["transactional_id"] = transactional_id
        kw.update(overrides)
        self._producer = AIOKafkaProducer(**kw)
        self._names: dict[str, str] = {}
        self._trackers: dict[str, _Delivery] = {}

    @property
    def raw(self) -> AIOKafkaProducer:
        return self._producer

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> "EventProducer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def physical(self, base: str) -> str:
        name = self._names.get(base)
        if name is None:
            # catalogue names get the deployment prefix; anything else is taken literally
            name = self._names[base] = topic(self._settings, base) if base in BY_NAME else base
        return name

    async def send(self, base_topic: str, event: Event, *, key: str | None = None,
                   partition: int | None = None) -> asyncio.Future:
        """Queue one event; the returned future resolves to its RecordMetadata."""
        name = self.physical(base_topic)
        k = key if key is not None else event.key
        # The Kafka timestamp is the ingest time, not the world time: replayed history keeps its
        # 2024 ts_event in the payload, but time-based retention and "read from time T" work on
        # when the event entered the log.
        fut = await self._producer.send(name, encode(event), key=k.encode() if k else None,
                                        partition=partition, timestamp_ms=event.ts_ingest // 1_000_000 or None)
        tracker = self._trackers.get(name)
        if tracker is None:
            tracker = self._trackers[name] = _Delivery(name)
        fut.add_done_callback(tracker)
        return fut

    async def send_retrying(self, base_topic: str, event: Event, *, key: str | None = None,
                            max_delay_s: float = 5.0) -> asyncio.Future:
        """``send``, waiting out a broker outage instead of failing: retriable errors (and a metadata
        wait that timed out, which is the broker being away too) are retried with backoff. The
        wait is backpressure on the caller; nothing it handed over is dropped."""
        delay = 0.1
        while True:
            try:
                return await self.send(base_topic, event, key=key)
            except KafkaError as e:
                if not (e.retriable or isinstance(e, KafkaTimeoutError)):
                    raise
                log.warning("kafka unavailable; retrying", topic=base_topic, error=repr(e), retry_in_s=delay)
                await asyncio.sleep(delay)  # backoff before the next attempt
                delay = min(max_delay_s, delay * 2)

    async def send_and_wait(self, base_topic: str, event: Event, **kw: Any) -> Any:
        return await (await self.send(base_topic, event, **kw))

    async def flush(self) -> None:
        await self._producer.flush()


class _Delivery:
    """One per topic: the done-callback that counts deliveries and failures.

    It sits on the hot path of every send, so the labelled counters are resolved once, and the
    acknowledgement latency is sampled from the gaps between acknowledgements of one in
    ``SAMPLE`` records rather than timed per record."""

    SAMPLE = 64
    __slots__ = ("ok", "failed", "n", "t_last")

    def __init__(self, topic: str):
        self.ok = metrics.PRODUCED.labels(topic)
        self.failed = metrics.PRODUCE_FAILED.labels(topic)
        self.n = 0
        self.t_last = time.monotonic()

    def __call__(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.failed.inc()
            return
        self.ok.inc()
        self.n += 1
        if self.n % self.SAMPLE == 0:
            now = time.monotonic()
            metrics.ACK_INTERVAL_SECONDS.observe((now - self.t_last) / self.SAMPLE)
            self.t_last = now
