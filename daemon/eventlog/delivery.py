"""Delivery that is retried until the broker acknowledges it, or stops the process.

``EventProducer.send_retrying`` hands its records to ``Redelivery``. A record stays here from
hand-over until the broker acknowledges it. aiokafka's idempotent producer gives up on a batch
that waited longer than ``request_timeout_ms`` for a partition leader (measured: a broker stopped
for 8 s with a 2 s timeout failed 92% of the records sent meanwhile with LeaderNotAvailable), and
the sequence gap that leaves makes the broker answer the next batch with OutOfOrderSequenceNumber,
which kills the producer's sender for good. So a failed delivery is recovered the only way that
works: wait until every delivery of the failed client has settled (so every failure is known),
replace the client (a new producer id, so no sequence gap), re-send every failed record in the
order it was first handed over, and only then let new records through.

Ordering per key. Within one client, idempotence writes a partition's batches in order and
without gaps: a later batch is written only if every earlier one was. So if a failed record was in
fact written (only its acknowledgement was lost), later records of its partition may be written
too, and its re-send is a copy placed after them: a reader that keeps the first copy of each
``event_id`` still sees hand-over order. If it was not written, no later record of its partition
on that client was either (they fail too), and the re-sends go out in hand-over order before any
new record. Either way the first copies are in hand-over order; the price is duplicates, which
readers drop by the deterministic ``event_id``.

Errors: retriable ones, timeouts and the ones that only mean "this client's session is broken"
(OutOfOrderSequenceNumber, InvalidProducerEpoch, the sender's own failure) are recovered; any
other (record too large, no authorisation, unknown version) cannot be helped by re-sending: that
is fatal. The process logs it, counts it, fails every waiting caller with ``DeliveryFatal`` and
``wait_fatal`` returns, so the daemon stops instead of running on with a hole in its log.

Memory: at most ``limit`` records are held; ``send`` waits for room (backpressure on the caller,
as during an outage), it never grows a list without bound.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka.errors import (InvalidProducerEpoch, KafkaError, KafkaTimeoutError, KafkaUnavailableError,
                             OutOfOrderSequenceNumber)

from daemon.errors import EigenloopError
from daemon.eventlog import metrics
from daemon.logging import get_logger
from schemas import Event

log = get_logger(__name__)

DEFAULT_LIMIT = 10_000  # records awaiting acknowledgement; ~5 MB of events at ~500 bytes each

# Not retriable by aiokafka's flags, but they say "this client's session is broken", which a new
# client with a fresh producer id cures.
_SESSION_ERRORS = (KafkaTimeoutError, OutOfOrderSequenceNumber, InvalidProducerEpoch, KafkaUnavailableError)


class DeliveryFatal(EigenloopError):
    """A record could not be delivered and re-sending it cannot help. Not a KafkaError on purpose:
    the retry loops that catch KafkaError must not swallow it."""


def recoverable(exc: BaseException) -> bool:
    """True when re-sending on a fresh client can deliver the record."""
    if isinstance(exc, asyncio.CancelledError):
        return True  # only our own stop cancels a delivery future; a re-send is harmless
    if not isinstance(exc, KafkaError):
        return False
    # type(...) is KafkaError: the sender task died of something unexpected ("Unexpected error
    # during batch delivery"); the client is dead, a new one is the cure
    return bool(exc.retriable) or isinstance(exc, _SESSION_ERRORS) or type(exc) is KafkaError


class Client(Protocol):
    """What ``Redelivery`` needs of ``EventProducer``."""

    async def send(self, base_topic: str, event: Event, *, key: str | None = None) -> asyncio.Future: ...

    async def replace_client(self) -> None: ...

    def physical(self, base: str) -> str: ...


@dataclass(eq=False, slots=True)
class _Pending:
    seq: int
    topic: str
    event: Event
    key: str | None
    done: asyncio.Future
    t0: float = field(default_factory=time.monotonic)
    failed: bool = False
    attempts: int = 0


_LIVE: "weakref.WeakSet[Redelivery]" = weakref.WeakSet()
# sampled when /metrics is scraped, so the hot path never touches a gauge
metrics.AWAITING_DELIVERY.set_function(lambda: sum(len(r.pending) for r in list(_LIVE)))
metrics.OLDEST_UNDELIVERED_SECONDS.set_function(lambda: max((r.oldest_age() for r in list(_LIVE)), default=0.0))


class Redelivery:
    """The records handed to ``send_retrying`` that Kafka has not acknowledged yet."""

    def __init__(self, client: Client, *, limit: int = DEFAULT_LIMIT, max_delay_s: float = 5.0):
        self._client = client
        self.limit = limit
        self.max_delay_s = max_delay_s
        self.pending: dict[int, _Pending] = {}  # insertion order is hand-over order
        self._seq = 0
        self._in_flight = 0  # enqueued on the current client, delivery not settled
        self._submitting = 0  # inside the client's send right now
        self._open = asyncio.Event()  # cleared while a recovery runs: new records wait
        self._open.set()
        self._room = asyncio.Event()  # set while fewer than ``limit`` records are held
        self._room.set()
        self._empty = asyncio.Event()  # set while nothing is held
        self._empty.set()
        self._settled = asyncio.Event()
        self._recovery: asyncio.Task | None = None
        self._again = False  # a delivery failed while a recovery was running
        self.fatal: BaseException | None = None
        self._dead = asyncio.Event()
        self.closing = False
        _LIVE.add(self)

    # --- the caller's side -----------------------------------------------------------------
    async def send(self, topic: str, event: Event, key: str | None) -> asyncio.Future:
        """Hold the record and enqueue it; the returned future resolves on acknowledgement."""
        while not (self._open.is_set() and self._room.is_set()):
            self._raise_if_dead()
            await (self._open if not self._open.is_set() else self._room).wait()
        self._raise_if_dead()
        self._seq += 1
        p = _Pending(self._seq, topic, event, key, asyncio.get_running_loop().create_future())
        self.pending[p.seq] = p
        self._empty.clear()
        if len(self.pending) >= self.limit:
            self._room.clear()
        try:
            await self._submit(p)
        except BaseException:
            # not handed over (cancelled caller, fatal error): the caller knows, we forget it
            if self.pending.pop(p.seq, None) is not None:
                self._after_removal()
            raise
        return p.done

    async def _submit(self, p: _Pending) -> None:
        delay = 0.1
        while True:
            self._raise_if_dead()
            if not self._open.is_set():
                await self._open.wait()
                continue
            self._submitting += 1
            try:
                fut = await self._client.send(p.topic, p.event, key=p.key)
                self._track(p, fut)
                return
            except KafkaError as e:
                if self.closing:
                    raise  # a send after ``close`` (ProducerClosed): the caller's bug, not the log's
                if not recoverable(e):
                    self._die(e, p)
                    raise DeliveryFatal(f"{p.topic}: {e!r}") from e
                if not (e.retriable or isinstance(e, KafkaTimeoutError)):
                    self._start_recovery(e)  # the client is dead (its sender failed): replace it
                    continue
                # the broker is away (a metadata wait or a full batch timed out): wait it out
                log.warning("kafka unavailable; retrying", topic=p.topic, error=repr(e), retry_in_s=delay)
            finally:
                self._submitting -= 1
                self._check_settled()
            await asyncio.sleep(delay)  # backoff before the next attempt
            delay = min(self.max_delay_s, delay * 2)

    async def drained(self) -> None:
        """Until every held record is acknowledged (raises ``DeliveryFatal`` if one cannot be)."""
        while self.pending:
            self._raise_if_dead()
            await self._empty.wait()
        self._raise_if_dead()

    async def wait_fatal(self) -> None:
        """Returns never, or raises ``DeliveryFatal`` once a record cannot be delivered."""
        await self._dead.wait()
        self._raise_if_dead()

    def oldest_age(self) -> float:
        for p in self.pending.values():
            return time.monotonic() - p.t0
        return 0.0

    async def close(self) -> None:
        """Stop re-sending; what is still held is reported as lost (a stop without ``drained``)."""
        self.closing = True
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.wait([self._recovery])  # wait for it to end; its cancellation is ours
        if self.pending:
            first = next(iter(self.pending.values()))
            log.error("producer stopped with events not delivered", undelivered=len(self.pending),
                      oldest_topic=first.topic, oldest_event_id=first.event.event_id)
            self._fail_all(DeliveryFatal("the producer stopped before these events were delivered"))
        _LIVE.discard(self)

    # --- deliveries -----------------------------------------------------------------------
    def _track(self, p: _Pending, fut: asyncio.Future) -> None:
        self._in_flight += 1
        p.attempts += 1
        fut.add_done_callback(lambda f, p=p: self._on_delivery(p, f))

    def _on_delivery(self, p: _Pending, fut: asyncio.Future) -> None:
        self._in_flight -= 1
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is None:
            if self.pending.pop(p.seq, None) is not None:
                if not p.done.done():
                    p.done.set_result(fut.result())
                self._after_removal()
        elif self.fatal is None and not self.closing:
            if recoverable(exc):
                p.failed = True
                self._start_recovery(exc)
            else:
                self._die(exc, p)
        self._check_settled()

    def _after_removal(self) -> None:
        if len(self.pending) < self.limit:
            self._room.set()
        if not self.pending:
            self._empty.set()

    def _check_settled(self) -> None:
        if self._in_flight == 0 and self._submitting == 0:
            self._settled.set()

    # --- recovery -------------------------------------------------------------------------
    def _start_recovery(self, exc: BaseException) -> None:
        if self.closing:
            return  # stopping: what is left is reported by ``close``
        if self._recovery is not None:
            self._again = True
            return
        self._open.clear()
        log.warning("event delivery failed; re-sending on a new Kafka client", error=repr(exc),
                    awaiting=len(self.pending))
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        delay = 0.1
        try:
            while True:
                # every delivery of the old client settles first (it is acknowledged, or fails):
                # only then is every failure known, and the re-sends can go out in order
                self._settled.clear()
                self._check_settled()
                await self._settled.wait()
                if self.fatal is not None:
                    return
                self._again = False  # failures so far are marked on their records and re-sent below
                try:
                    await self._client.replace_client()
                    for p in [p for p in self.pending.values() if p.failed]:
                        fut = await self._client.send(p.topic, p.event, key=p.key)
                        p.failed = False
                        self._track(p, fut)
                        metrics.RESENT.labels(self._client.physical(p.topic)).inc()
                except KafkaError as e:
                    if not recoverable(e):
                        self._die(e, None)
                        return
                    log.warning("re-sending failed; retrying", error=repr(e), retry_in_s=delay)
                    await asyncio.sleep(delay)  # backoff: the broker is still away
                    delay = min(self.max_delay_s, delay * 2)
                    continue
                if not self._again and not any(p.failed for p in self.pending.values()):
                    break
            log.info("undelivered events re-sent", awaiting=len(self.pending))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug here must stop the process, not hang it
            self._die(e, None)
        finally:
            self._recovery = None
            self._open.set()

    # --- the end --------------------------------------------------------------------------
    def _die(self, exc: BaseException, p: _Pending | None) -> None:
        if self.fatal is not None:
            return
        self.fatal = exc
        topic = self._client.physical(p.topic) if p is not None else "unknown"
        metrics.PRODUCE_FATAL.labels(topic).inc()
        log.error("event delivery failed and cannot be retried; stopping", topic=topic,
                  event_id=p.event.event_id if p is not None else None, error=repr(exc),
                  undelivered=len(self.pending))
        self._fail_all(DeliveryFatal(f"{topic}: {exc!r}"))
        # wake every waiter so it sees the fatal error
        for ev in (self._dead, self._open, self._room, self._empty, self._settled):
            ev.set()

    def _fail_all(self, exc: Exception) -> None:
        for q in self.pending.values():
            if not q.done.done():
                q.done.set_exception(exc)
                q.done.exception()  # retrieved: callers may ignore the future; the log said it
        self.pending.clear()

    def _raise_if_dead(self) -> None:
        if self.fatal is not None:
            raise DeliveryFatal(repr(self.fatal)) from self.fatal
