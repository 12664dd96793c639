"""No silent produce loss: ``send_retrying`` re-sends a failed delivery until
the broker acknowledges it, keeps per-key order of first copies, bounds what it holds, and stops
on a failure that re-sending cannot fix.

The first tests drive ``EventProducer`` over an in-memory fake of the aiokafka client; the last
stops a real broker (its own, not the session's) for longer than the request timeout mid-run.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka.errors import (KafkaConnectionError, KafkaTimeoutError, LeaderNotAvailableError,
                             MessageSizeTooLargeError, OutOfOrderSequenceNumber, RequestTimedOutError)
from prometheus_client import REGISTRY

from daemon.eventlog import DeliveryFatal, EventProducer
from schemas import Action, decode
from schemas.settings import KafkaSettings, Settings


def action(i: int, groups: int = 4) -> Action:
    g = f"g{i % groups}"
    return Action(group_id=g, candidate_index=i, group_size=1_000_000, policy_version=0, seed=i, prompt_id="p",
                  symbol="BTC/USDT", prompt="p", completion=str(i), invalid_reason="test", key=g, source="test")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- an in-memory aiokafka client ----------------------------------------------------------

class FakeBroker:
    """The log (what was written, in order, copies included) and the switches the tests flip.
    ``hold``: sends are queued unacknowledged until ``ack``/``fail``; ``down``: a new client
    cannot start."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes, bytes | None]] = []
        self.clients: list[FakeClient] = []
        self.hold = False
        self.down = False
        self.enqueue_errors: list[Exception] = []  # raised by the next sends, one each

    @property
    def client(self) -> "FakeClient":
        return self.clients[-1]


class FakeClient:
    """Enough of AIOKafkaProducer for EventProducer: start/stop/send/flush."""

    def __init__(self, broker: FakeBroker, **kw) -> None:
        self.broker = broker
        self.kw = kw
        self.queue: list[tuple[tuple[str, bytes, bytes | None], asyncio.Future]] = []
        self.dead: Exception | None = None
        self.stopped = False
        broker.clients.append(self)

    async def start(self) -> None:
        if self.broker.down:
            raise KafkaConnectionError("fake broker down")

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        # the real flush waits for the queued batches; the tests settle them themselves
        await asyncio.gather(*(f for _, f in self.queue), return_exceptions=True)

    async def send(self, name, value, key=None, partition=None, timestamp_ms=None) -> asyncio.Future:
        assert not self.stopped, "send on a stopped client"
        if self.dead is not None:
            raise self.dead  # like aiokafka once its sender task died
        if self.broker.enqueue_errors:
            raise self.broker.enqueue_errors.pop(0)
        fut = asyncio.get_running_loop().create_future()
        rec = (name, value, key)
        if self.broker.hold:
            self.queue.append((rec, fut))
        else:
            self.broker.log.append(rec)
            fut.set_result(("meta", len(self.broker.log)))
        return fut

    def ack(self, n: int | None = None) -> None:
        """Write and acknowledge the first ``n`` queued records (all by default)."""
        n = len(self.queue) if n is None else n
        for rec, fut in self.queue[:n]:
            self.broker.log.append(rec)
            fut.set_result(("meta", len(self.broker.log)))
        del self.queue[:n]

    def fail(self, exc: Exception, n: int | None = None, *, written: int = 0, die: bool = False) -> None:
        """Fail the first ``n`` queued records (all by default) with ``exc``; the first ``written``
        were written all the same (a lost acknowledgement). ``die``: the sender died, later sends
        raise."""
        n = len(self.queue) if n is None else n
        for i, (rec, fut) in enumerate(self.queue[:n]):
            if i < written:
                self.broker.log.append(rec)
            fut.set_exception(exc)
        del self.queue[:n]
        if die:
            self.dead = exc


@pytest.fixture
def fake(tmp_path: Path):
    broker = FakeBroker()
    s = Settings(data_dir=tmp_path, kafka=KafkaSettings(bootstrap="fake:9092", topic_prefix="u."))

    def make(**kw) -> EventProducer:
        return EventProducer(s, client_factory=lambda **ckw: FakeClient(broker, **ckw), **kw)

    return broker, make


def first_copies(log) -> list[str]:
    """event_ids in log order, later copies of an id dropped (what a deduping reader sees)."""
    seen, out = set(), []
    for _, value, _ in log:
        eid = decode(value).event_id
        if eid not in seen:
            seen.add(eid)
            out.append(eid)
    return out


def per_key(ids: list[str], events: dict[str, Action]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for eid in ids:
        out[events[eid].key].append(events[eid].candidate_index)
    return out


async def passes_until(cond) -> None:
    """Scheduler passes until ``cond`` holds; only for code paths without timers."""
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0)  # one scheduler pass, not a delay
    raise AssertionError("condition not reached in 200 scheduler passes")


async def run_until_blocked(task: asyncio.Task) -> None:
    """Let every ready callback run (no timers are involved): a task still pending afterwards is
    waiting on an event, not on time."""
    for _ in range(20):
        await asyncio.sleep(0)  # one scheduler pass, not a delay
    assert not task.done(), task


# --- the retry logic, in memory ------------------------------------------------------------

def test_failed_deliveries_are_resent_in_order_on_a_new_client(fake):
    """What aiokafka does when the broker is away longer than request_timeout (measured against
    the real broker): the expired batch fails with LeaderNotAvailable, the next one with
    OutOfOrderSequenceNumber and the sender dies. Every record must still arrive, in order."""
    broker, make = fake

    async def main():
        p = make()
        await p.start()
        name = p.physical("agent.actions")
        resent0 = sample("eigenloop_events_resent_total", topic=name)
        events = [action(i) for i in range(12)]
        broker.hold = True
        for ev in events[:10]:
            await p.send_retrying("agent.actions", ev)
        first = broker.client
        first.ack(3)
        broker.down = True
        first.fail(LeaderNotAvailableError(), 4)
        first.fail(OutOfOrderSequenceNumber(), die=True)
        await passes_until(lambda: len(p.redelivery.pending) == 7)  # the acknowledgement callbacks ran
        # new records wait while the broker is away (backpressure), they are not lost
        blocked = asyncio.create_task(p.send_retrying("agent.actions", events[10]))
        await run_until_blocked(blocked)
        broker.hold = False
        broker.down = False
        await blocked
        await p.send_retrying("agent.actions", events[11])
        await p.flush()
        assert first.stopped and broker.client is not first
        ids = first_copies(broker.log)
        assert ids == [e.event_id for e in events]
        assert len(broker.log) == 12, "nothing was written twice here: the failed records never arrived"
        assert all(name == rec[0] for rec in broker.log)
        assert sample("eigenloop_events_resent_total", topic=name) - resent0 == 7
        assert not p.redelivery.pending and sample("eigenloop_events_awaiting_delivery") == 0
        await p.stop()

    asyncio.run(main())


def test_lost_acknowledgements_leave_copies_that_dedupe_to_order(fake):
    """A request that timed out after the broker wrote it: the re-sends are copies after the
    originals; the first copy of every event_id is still in hand-over order per key."""
    broker, make = fake

    async def main():
        p = make()
        await p.start()
        events = [action(i) for i in range(8)]
        by_id = {e.event_id: e for e in events}
        broker.hold = True
        for ev in events[:6]:
            await p.send_retrying("learn.updates", ev)
        broker.hold = False  # the re-sends and later sends are acknowledged at once
        broker.client.fail(RequestTimedOutError(), written=4)
        for ev in events[6:]:
            await p.send_retrying("learn.updates", ev)
        await p.flush()
        ids = first_copies(broker.log)
        assert sorted(ids) == sorted(by_id) and len(broker.log) == 8 + 4
        assert per_key(ids, by_id) == per_key([e.event_id for e in events], by_id)
        await p.stop()

    asyncio.run(main())


def test_a_resend_that_fails_again_is_resent_again(fake):
    broker, make = fake

    async def main():
        p = make()
        await p.start()
        events = [action(i) for i in range(5)]
        broker.hold = True
        for ev in events:
            await p.send_retrying("agent.actions", ev)
        broker.client.fail(LeaderNotAvailableError())
        # the recovery replaces the client and re-sends all five; fail that client's too
        await passes_until(lambda: len(broker.clients) == 2 and len(broker.client.queue) == 5)
        broker.client.fail(KafkaTimeoutError(), die=True)
        broker.hold = False
        await p.flush()
        assert len(broker.clients) == 3
        assert first_copies(broker.log) == [e.event_id for e in events]
        await p.stop()

    asyncio.run(main())


def test_enqueue_timeouts_are_waited_out(fake):
    broker, make = fake

    async def main():
        p = make(max_unacked=100)
        await p.start()
        broker.enqueue_errors = [KafkaTimeoutError(), KafkaConnectionError("away")]
        ev = action(0)
        await p.send_retrying("agent.actions", ev)
        await p.flush()
        assert first_copies(broker.log) == [ev.event_id] and len(broker.clients) == 1
        await p.stop()

    asyncio.run(main())


def test_held_records_are_bounded(fake):
    """At most ``max_unacked`` records are held; the next caller waits until one is acknowledged."""
    broker, make = fake

    async def main():
        p = make(max_unacked=5)
        await p.start()
        broker.hold = True
        events = [action(i) for i in range(7)]
        for ev in events[:5]:
            await p.send_retrying("agent.actions", ev)
        sixth = asyncio.create_task(p.send_retrying("agent.actions", events[5]))
        await run_until_blocked(sixth)
        assert len(p.redelivery.pending) == 5 and len(broker.client.queue) == 5
        broker.client.ack(1)
        await sixth
        assert len(p.redelivery.pending) == 5
        broker.hold = False
        broker.client.ack()
        await p.send_retrying("agent.actions", events[6])
        await p.flush()
        assert first_copies(broker.log) == [e.event_id for e in events]
        await p.stop()

    asyncio.run(main())


def test_a_failure_that_resending_cannot_fix_is_fatal(fake):
    broker, make = fake

    async def main():
        p = make()
        await p.start()
        fatal0 = sample("eigenloop_produce_fatal_total", topic="u.agent.actions")
        watcher = asyncio.create_task(p.wait_fatal())
        broker.hold = True
        for i in range(3):
            await p.send_retrying("agent.actions", action(i))
        broker.client.fail(MessageSizeTooLargeError())
        with pytest.raises(DeliveryFatal):
            await asyncio.wait_for(watcher, 30)  # a bound, so a regression fails instead of hanging
        with pytest.raises(DeliveryFatal):
            await p.send_retrying("agent.actions", action(3))
        with pytest.raises(DeliveryFatal):
            await p.flush()
        assert sample("eigenloop_produce_fatal_total", topic="u.agent.actions") - fatal0 == 1
        assert len(broker.clients) == 1, "a fatal error must not be retried on a new client"
        await p.stop()

    asyncio.run(main())


# --- the real broker -------------------------------------------------------------------------

REQUEST_TIMEOUT_MS = 1500


async def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)  # polling interval of a deadline loop


def test_broker_outage_longer_than_request_timeout_loses_nothing(tmp_path: Path):
    """A dedicated broker (the session's must stay up for the other tests) is stopped while
    actions and updates are being sent, stays away well past ``request_timeout_ms``, and comes
    back. Every event is in the log after event_id dedupe, per key in send order, and the
    failures really happened (so the re-send path is what saved them)."""
    from daemon.eventlog import read_range
    from daemon.eventlog.admin import ensure_topics
    from daemon.ops import kafka_local

    broker_dir = tmp_path / "broker"
    n, topics = 1500, ("agent.actions", "learn.updates")

    async def main() -> dict:
        info = await asyncio.to_thread(kafka_local.start, broker_dir)
        s = Settings(data_dir=tmp_path / "data", kafka=KafkaSettings(bootstrap=info.bootstrap, topic_prefix="pd."))
        await ensure_topics(s, partitions=3)
        failed0 = {t: sample("eigenloop_events_produce_failed_total", topic=f"pd.{t}") for t in topics}
        resent0 = {t: sample("eigenloop_events_resent_total", topic=f"pd.{t}") for t in topics}
        p = EventProducer(s, request_timeout_ms=REQUEST_TIMEOUT_MS)
        await p.start()
        sent: dict[str, list[Action]] = {t: [] for t in topics}

        async def sender():
            for i in range(n):
                t = topics[i % 2]
                ev = action(i, groups=6)
                await p.send_retrying(t, ev)
                sent[t].append(ev)
                await asyncio.sleep(0.004)  # pacing, so the outage falls mid-stream

        task = asyncio.create_task(sender())
        try:
            await _wait_for(lambda: sum(map(len, sent.values())) >= 300 or task.done(), 60, "300 events sent")
            assert not task.done()
            await asyncio.to_thread(kafka_local.stop, broker_dir)
            down_at = time.monotonic()
            # away until deliveries have failed and for at least 3 request timeouts
            await _wait_for(lambda: any(sample("eigenloop_events_produce_failed_total", topic=f"pd.{t}") > failed0[t]
                                        for t in topics), 60, "a delivery to fail during the outage")
            await _wait_for(lambda: time.monotonic() - down_at > 3 * REQUEST_TIMEOUT_MS / 1000, 60, "the outage")
            held = len(p.redelivery.pending)
            # the same port: the producer's bootstrap address must find it again
            await asyncio.to_thread(kafka_local.start, broker_dir, port=info.port)
            print(f"broker back after {time.monotonic() - down_at:.1f} s, {held} events held", flush=True)
            await asyncio.wait_for(task, 180)
            await asyncio.wait_for(p.flush(), 120)
        finally:
            task.cancel()
            # bounded, and never masking the error that got here: aiokafka's stop waits for its
            # queued batches, which a broker that did not come back never takes
            await asyncio.wait([asyncio.create_task(p.stop())], timeout=60)
        out: dict = {"held_during_outage": held}
        for t in topics:
            got = [ev async for _, ev in read_range(s, t)]
            ids = [e.event_id for e in got]
            first, seen = [], set()
            for e in got:
                if e.event_id not in seen:
                    seen.add(e.event_id)
                    first.append(e)
            want = {e.event_id for e in sent[t]}
            assert len(sent[t]) == n // 2
            assert seen == want, f"{t}: {len(want - seen)} events lost"
            keys: dict[str, list[int]] = defaultdict(list)
            for e in first:
                keys[e.key].append(e.candidate_index)
            assert all(v == sorted(v) for v in keys.values()), f"{t}: per-key order broken"
            out[t] = {"records": len(ids), "copies": len(ids) - len(seen),
                      "failed": sample("eigenloop_events_produce_failed_total", topic=f"pd.{t}") - failed0[t],
                      "resent": sample("eigenloop_events_resent_total", topic=f"pd.{t}") - resent0[t]}
        assert sum(out[t]["resent"] for t in topics) > 0, f"no delivery was re-sent: the outage tested nothing {out}"
        return out

    try:
        out = asyncio.run(main())
        print("produce-delivery figures:", out)
    finally:
        kafka_local.stop(broker_dir)  # whatever happened, this test leaves no broker behind
