"""Produce and consume rates of eigenloop's event log wrapper against raw aiokafka.

Both sides run in this process against the same broker, on fresh topics, with the same
durability settings (acks=all, idempotence) and batching, and the same number of events. The
raw baseline sends pre-encoded bytes and reads bytes; the wrapper takes typed events (so its
figure includes JSON encoding) and yields decoded, validated events.

    .venv/bin/python benchmarks/eventlog_throughput.py [--events 200000]

The broker: as every eigenloop command finds it (``EIGENLOOP_KAFKA__BOOTSTRAP``, the config file,
the local broker of ``eigenloop kafka start``), else a throwaway one (``benchmarks/bench_kafka.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from benchmarks.bench_kafka import bench_settings  # noqa: E402
from daemon.eventlog import EventProducer, read_range  # noqa: E402
from daemon.eventlog.admin import ensure_topics  # noqa: E402
from daemon.eventlog.connection import client_kwargs, topic  # noqa: E402
from schemas import MarketTrade, encode  # noqa: E402
from schemas.settings import Settings  # noqa: E402


def events(n: int) -> list[MarketTrade]:
    return [MarketTrade(exchange="binance", symbol=f"S{i % 8}", trade_id=str(i), price=61000.0 + i % 100, qty=0.01,
                        side="buy", key=f"S{i % 8}", source="bench") for i in range(n)]


async def produce_raw(s: Settings, name: str, evs: list[MarketTrade]) -> float:
    payloads = [(encode(e), e.key.encode()) for e in evs]
    p = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True, linger_ms=s.kafka.linger_ms,
                         max_batch_size=s.kafka.max_batch_size)
    await p.start()
    t0 = time.perf_counter()
    futs = [await p.send(name, v, key=k) for v, k in payloads]
    await p.flush()
    await asyncio.gather(*futs)
    dt = time.perf_counter() - t0
    await p.stop()
    return len(evs) / dt


async def produce_ours(s: Settings, base: str, evs: list[MarketTrade]) -> float:
    async with EventProducer(s) as p:
        t0 = time.perf_counter()
        futs = [await p.send(base, e) for e in evs]
        await p.flush()
        await asyncio.gather(*futs)
        return len(evs) / (time.perf_counter() - t0)


async def consume_raw(s: Settings, name: str, n: int, parse: bool = False) -> float:
    c = AIOKafkaConsumer(name, **client_kwargs(s), auto_offset_reset="earliest", enable_auto_commit=False,
                         max_poll_records=5000, group_id=f"bench-{uuid.uuid4().hex[:6]}")
    await c.start()
    got = 0
    t0 = time.perf_counter()
    while got < n:
        for recs in (await c.getmany(timeout_ms=1000)).values():
            got += len(recs)
            if parse:
                for r in recs:
                    json.loads(r.value)
    dt = time.perf_counter() - t0
    await c.stop()
    return n / dt


async def consume_ours(s: Settings, base: str, n: int) -> float:
    t0 = time.perf_counter()
    got = 0
    async for _ in read_range(s, base, isolation_level="read_uncommitted"):
        got += 1
    assert got == n, (got, n)
    return n / (time.perf_counter() - t0)


async def main(n: int, s: Settings) -> None:
    bootstrap = s.kafka.bootstrap
    await ensure_topics(s, partitions=6)
    evs = events(n)
    raw_topic = topic(s, "market.events")
    ours_topic = topic(s, "agent.actions")  # any fresh catalogue topic with the same partitions
    # warm-up: connections, metadata, leader election of fresh topics
    await produce_raw(s, raw_topic, evs[:2000])
    await produce_ours(s, "agent.actions", evs[:2000])
    p_raw = await produce_raw(s, raw_topic, evs)
    p_ours = await produce_ours(s, "agent.actions", evs)
    c_bytes = await consume_raw(s, raw_topic, n + 2000)
    c_raw = await consume_raw(s, raw_topic, n + 2000, parse=True)
    c_ours = await consume_ours(s, "agent.actions", n + 2000)
    assert ours_topic
    print(f"events: {n}  (broker {bootstrap}, {os.cpu_count()} CPUs)")
    print(f"produce  raw aiokafka {p_raw:>10,.0f} ev/s   eigenloop {p_ours:>10,.0f} ev/s   ratio {p_ours / p_raw:.2f}")
    print(f"consume  raw aiokafka {c_raw:>10,.0f} ev/s   eigenloop {c_ours:>10,.0f} ev/s   ratio {c_ours / c_raw:.2f}")
    print(f"consume  raw aiokafka, bytes only {c_bytes:>10,.0f} ev/s   ratio {c_ours / c_bytes:.2f}")
    print("(raw consume parses each value with json.loads, the least any consumer does; eigenloop also\n"
          " validates the schema and builds typed records. Produce: eigenloop includes JSON encoding.)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    with bench_settings("bench") as settings:
        asyncio.run(main(args.events, settings))
