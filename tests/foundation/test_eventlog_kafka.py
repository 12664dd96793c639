"""The event log against the real broker: volume, ordering, timestamps, retries, dead letters."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer

from daemon.eventlog import DeadLetterer, EventProducer, GroupReader, offsets_for_timestamp, read_range
from daemon.eventlog.connection import client_kwargs, topic
from schemas import DeadLetter, MarketTrade, decode

N = 100_000
SYMBOLS = [f"SYM{i}" for i in range(12)]


def trade(i: int, ts_ms: int | None = None) -> MarketTrade:
    sym = SYMBOLS[i % len(SYMBOLS)]
    kw = {"ts_ingest": ts_ms * 1_000_000} if ts_ms is not None else {}
    return MarketTrade(exchange="test", symbol=sym, trade_id=str(i), price=100.0 + i % 7, qty=1.0, side="buy",
                       key=sym, source="test", **kw)


async def _produce_and_consume(settings) -> None:
    async with EventProducer(settings) as producer:
        futures = [await producer.send("market.events", trade(i)) for i in range(N)]
        await producer.flush()
        metas = await asyncio.gather(*futures)
    assert len(metas) == N

    dl_producer = EventProducer(settings)
    await dl_producer.start()
    reader = GroupReader(settings, ["market.events"], group_id=f"{settings.kafka.topic_prefix}readers",
                         dead_letter=DeadLetterer(dl_producer))
    await reader.start()
    seen: dict[str, int] = {}
    per_partition: dict[int, list[int]] = defaultdict(list)
    per_symbol: dict[str, list[int]] = defaultdict(list)
    try:
        async for batch in reader.batches(timeout_ms=1000):
            for rec, ev in batch:
                seen[ev.event_id] = seen.get(ev.event_id, 0) + 1
                per_partition[rec.partition].append(rec.offset)
                per_symbol[ev.symbol].append(int(ev.trade_id))
            await reader.commit()
            if len(seen) >= N:
                break
    finally:
        await reader.stop()
        await dl_producer.stop()
    assert len(seen) == N
    assert max(seen.values()) == 1, "a record was delivered twice"
    for offsets in per_partition.values():
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    # the key decides the partition: each symbol's trades arrive in the order they were sent
    for ids in per_symbol.values():
        assert ids == sorted(ids)
    assert len(per_partition) == 3


@pytest.mark.kafka
def test_100k_events_round_trip_through_a_consumer_group(kafka_settings):
    asyncio.run(_produce_and_consume(kafka_settings))


@pytest.mark.kafka
def test_reading_by_timestamp_lands_on_the_right_offsets(kafka_settings):
    # record timestamps are ingest times; stay well inside the topic's retention
    base_ms = int(time.time() * 1000) - 3_600_000

    async def go():
        async with EventProducer(kafka_settings) as producer:
            metas = []
            for i in range(300):
                metas.append(await producer.send_and_wait("market.events", trade(i, base_ms + i * 1000)))
        cut_ms = base_ms + 150 * 1000
        offsets = await offsets_for_timestamp(kafka_settings, "market.events", cut_ms)
        # expected: per partition, the first offset whose record is at or after the cut
        expected: dict[int, int] = {}
        ends: dict[int, int] = defaultdict(int)
        for i, m in enumerate(metas):
            ends[m.partition] = max(ends[m.partition], m.offset + 1)
            if base_ms + i * 1000 >= cut_ms and m.partition not in expected:
                expected[m.partition] = m.offset
        for p, end in ends.items():
            expected.setdefault(p, end)
        assert offsets == expected
        got = [ev async for _, ev in read_range(kafka_settings, "market.events", start_timestamp_ms=cut_ms)]
        assert sorted(int(e.trade_id) for e in got) == list(range(150, 300))
        everything = [ev async for _, ev in read_range(kafka_settings, "market.events")]
        assert len(everything) == 300

    asyncio.run(go())


class _DropFirstProduceResponse:
    """Wraps a client's ``send``: the first produce requests reach the broker and are written,
    but their responses are replaced by a retriable error, so the producer must resend the
    very same batches. That is exactly the case idempotence exists for."""

    def __init__(self, client, drops: int):
        self._send = client.send
        self.drops = drops
        self.dropped = 0

    async def __call__(self, node_id, request, **kw):
        from aiokafka.errors import RequestTimedOutError

        response = await self._send(node_id, request, **kw)
        if type(request).__name__.startswith("ProduceRequest") and self.dropped < self.drops:
            self.dropped += 1
            raise RequestTimedOutError("injected: response lost after the broker wrote the batch")
        return response


async def _count(settings, name: str) -> int:
    return len([1 async for _ in read_range(settings, name, isolation_level="read_uncommitted")])


@pytest.mark.kafka
@pytest.mark.parametrize("idempotent", [True, False])
def test_forced_retry(kafka_settings, idempotent):
    """With idempotence a lost acknowledgement costs nothing; without it, the same fault
    duplicates records (which proves the fault injection really forces a resend)."""
    name = topic(kafka_settings, "market.events")

    async def go():
        producer = AIOKafkaProducer(**client_kwargs(kafka_settings), acks="all", enable_idempotence=idempotent,
                                    linger_ms=50, retry_backoff_ms=20) if not idempotent else None
        if idempotent:
            wrapper = EventProducer(kafka_settings, linger_ms=50, retry_backoff_ms=20)
            producer = wrapper.raw
        await producer.start()
        fault = _DropFirstProduceResponse(producer.client, drops=3)
        producer.client.send = fault
        try:
            futs = [await producer.send(name, trade(i).model_dump_json().encode(), key=b"SYM0") for i in range(50)]
            await asyncio.gather(*futs)
        finally:
            await producer.stop()
        assert fault.dropped == 3
        return await _count(kafka_settings, "market.events")

    n = asyncio.run(go())
    if idempotent:
        assert n == 50
    else:
        assert n > 50


@pytest.mark.kafka
def test_malformed_bytes_become_dead_letters(kafka_settings):
    name = topic(kafka_settings, "market.events")
    bad = [b"\x00\x01\x02", b'{"type":"market.trade","schema_version":2,"price":"NaN"}', b"[]"]

    async def go():
        raw = AIOKafkaProducer(**client_kwargs(kafka_settings))
        await raw.start()
        try:
            for b in bad:
                await raw.send_and_wait(name, b, key=b"SYM0")
            await raw.send_and_wait(name, trade(1).model_dump_json().encode(), key=b"SYM0")
        finally:
            await raw.stop()
        async with EventProducer(kafka_settings) as dl_producer:
            dead = DeadLetterer(dl_producer, source="test")
            reader = GroupReader(kafka_settings, ["market.events"], group_id=kafka_settings.kafka.topic_prefix + "g",
                                 dead_letter=dead)
            await reader.start()
            good = []
            try:
                async for batch in reader.batches(timeout_ms=500):
                    good.extend(ev for _, ev in batch)
                    if len(good) + dead.count >= 4:
                        break
            finally:
                await reader.stop()
        letters = [ev async for _, ev in read_range(kafka_settings, "deadletter")]
        return good, letters

    good, letters = asyncio.run(go())
    assert [e.trade_id for e in good] == ["1"]
    assert len(letters) == 3 and all(isinstance(d, DeadLetter) for d in letters)
    assert {d.raw_bytes() for d in letters} == set(bad)
    reasons = " | ".join(d.reason for d in letters)
    assert "not valid JSON" in reasons and "price" in reasons and "expected a JSON object" in reasons
    assert all(d.source_topic == name and d.offset >= 0 for d in letters)
    assert decode(letters[0].model_dump_json()).type == "deadletter"
