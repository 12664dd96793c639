"""The producer every eigenloop process writes events with.

Record timestamps are ``ts_ingest`` (see ``send``). Durability: idempotence on and ``acks=all``, so a retried batch is written once and an
acknowledged event survives the leader. Ordering: per key (the key picks the partition, and
idempotence keeps order across retries). Delivery is counted when the broker acknowledges.
``send_retrying`` holds each record until it is acknowledged and re-sends a failed delivery on a
fresh client, or stops the process on one that cannot succeed (``daemon/eventlog/delivery.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from daemon.eventlog import metrics
from daemon.eventlog.connection import client_kwargs, physical
from daemon.eventlog.delivery import DEFAULT_LIMIT, DeliveryFatal, Redelivery
from daemon.logging import get_logger
from schemas import Event, encode
from schemas.settings import Settings

log = get_logger(__name__)


class EventProducer:
    """Typed events in, Kafka records out. ``start``/``stop`` bracket its life.

    ``send`` returns once the record is queued in the batch accumulator and gives back a
    future for its delivery; cancelling that future does not stop delivery, and a failed delivery
    is only counted. ``send_retrying`` is the one that does not lose records: see there.
    ``flush`` waits for everything queued so far. Topic names are catalogue names; the deployment
    prefix is added. ``max_unacked`` bounds the records ``send_retrying`` holds; ``client_factory``
    (tests) builds the aiokafka client from its keyword arguments.
    """

    def __init__(self, settings: Settings, *, transactional_id: str | None = None, max_unacked: int = DEFAULT_LIMIT,
                 client_factory: Callable[..., Any] = AIOKafkaProducer, **overrides: Any):
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
        self._kw = kw
        self._factory = client_factory
        self._producer = client_factory(**kw)
        self._names: dict[str, str] = {}
        self._trackers: dict[str, _Delivery] = {}
        # a transaction aborts as a whole instead (TransactionalPipe); re-sending one record of it
        # on a new client would break it
        self._redelivery = None if transactional_id else Redelivery(self, limit=max_unacked)

    @property
    def raw(self) -> AIOKafkaProducer:
        return self._producer

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        if self._redelivery is not None:
            await self._redelivery.close()
        await self._producer.stop()

    async def replace_client(self) -> None:
        """Swap the aiokafka client for a new one (a new producer id, so no sequence gap of the
        old one carries over); raises a KafkaError while the broker is away."""
        try:
            await self._producer.stop()
        except KafkaError as e:
            # the old client failed already; its stop only releases connections, and its
            # records are accounted for by Redelivery
            log.warning("stopping the failed Kafka client", error=repr(e))
        new = self._factory(**self._kw)
        try:
            await new.start()
        except BaseException:
            await new.stop()  # release what the failed start opened
            raise
        self._producer = new

    async def wait_fatal(self) -> None:
        """Returns never; raises ``DeliveryFatal`` once a ``send_retrying`` record cannot be
        delivered. The daemon watches it and stops."""
        if self._redelivery is None:
            await asyncio.Event().wait()  # a transactional producer has no held records
        assert self._redelivery is not None
        await self._redelivery.wait_fatal()

    @property
    def redelivery(self) -> Redelivery | None:
        return self._redelivery

    async def __aenter__(self) -> "EventProducer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def physical(self, base: str) -> str:
        name = self._names.get(base)
        if name is None:
            name = self._names[base] = physical(self._settings, base)
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

    async def send_retrying(self, base_topic: str, event: Event, *, key: str | None = None) -> asyncio.Future:
        """``send`` that loses nothing: waits out a broker outage at enqueue (backpressure on the
        caller), holds the record until the broker acknowledges it, and re-sends it (same event,
        same ``event_id``) on a fresh client when its delivery fails, in hand-over order. Waits
        while ``max_unacked`` records are held. Raises ``DeliveryFatal`` once a delivery failed in
        a way re-sending cannot fix (the process must stop). The future resolves to the
        acknowledging RecordMetadata."""
        if self._redelivery is None:
            raise DeliveryFatal("send_retrying on a transactional producer: its transaction is the retry unit")
        return await self._redelivery.send(base_topic, event, key)

    async def send_and_wait(self, base_topic: str, event: Event, **kw: Any) -> Any:
        return await (await self.send(base_topic, event, **kw))

    async def flush(self) -> None:
        """Until everything queued so far is delivered, re-sends included (raises
        ``DeliveryFatal`` if a held record cannot be)."""
        await self._producer.flush()
        if self._redelivery is not None:
            await self._redelivery.drained()


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
