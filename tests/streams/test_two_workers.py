"""Two real ``eigenloop streams worker`` processes in one consumer group, against the real broker.

Four symbol-venues of recorded Binance data over two market partitions. The first worker runs
alone on the first half of the input; the second joins, so one partition moves from a running
worker that holds its market state (the new owner rebuilds it from the log, the old one drops
it and rebuilds what it keeps). Then the middle of the input, and the second worker is killed
with SIGKILL mid-stream, once it has closed a group of it; the last seconds arrive while its
partition has no owner. The partition goes back to the survivor, which rebuilds that market
state from the log again. After ``event_id`` dedupe no group is missing or doubled, and each
group and outcome equals the pure functions' result for the same input.

Event time moves only with records (``idle_close`` off) and the grace is longer than the test:
the input pauses between the halves and a partition waits out the session timeout after the
kill, and a wall-clock estimate would rightly close windows in those pauses, which is not what
this test is about (``test_stream_worker`` covers idle closing). After a takeover, event time
starts at the rebuilt book's last quote (``streams.engine``), so with idle closing off a
partition's last groups close on market records that come after it: hence input after the kill.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import murmur2

from schemas.settings import GroupConfig, RewardConfig, StreamsSettings
from schemas.topics import topic_name
from streams.capture import read_capture
from stream_cases import comparable, expected, make_actions
from worker_harness import Collector, Worker, produce, run, write_config

pytestmark = pytest.mark.kafka
S = 1_000_000_000
PARTITIONS = 2
# (capture, venue): BTC* keys land on partition 0, ETH* on partition 1 of two
CAPTURES = [("exchange_binance/spot/spot_btcusdt_20240808.gz", "binance"),
            ("exchange_binance/spot/spot_ethusdt_20240808.gz", "binance"),
            ("exchange_binance/coinm_futures/cm_btcusd_perp_20240808.gz", "binancecoinm"),
            ("exchange_binance/coinm_futures/cm_ethusd_perp_20240808.gz", "binancecoinm")]
SECONDS = 60
TAIL_S = 10  # the last seconds of each symbol arrive after the kill


def _partition(key: str) -> int:
    """Where the producers' default partitioner puts a key (Kafka's murmur2 rule)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def _events(shared_data, capture: str, venue: str):
    evs, first = [], None
    for ev in read_capture(shared_data / capture, exchange=venue):
        first = ev.ts_event if first is None else first
        if ev.ts_event - first > SECONDS * S:
            break
        evs.append(ev)
    return evs


def _settings(kafka_settings, name: str):
    s = kafka_settings.model_copy(update={
        "reward": RewardConfig(fee_bps=4.5, slippage_model="spread", slippage_bps=0.5),
        "groups": GroupConfig(group_size=4, grace_s=600.0, partial="keep", min_partial=2),
        "streams": StreamsSettings(idle_tick_s=0.25, idle_close=False),
    })
    # one consumer group; each worker its own data folder, as on two hosts
    return s.model_copy(update={"data_dir": s.data_dir / name})


def _case(kafka_settings, shared_data):
    """Per symbol-venue: (partition, events, actions); the input halves; the pure functions'
    outcomes and groups."""
    from daemon.eventlog.admin import ensure_topics

    prefix = kafka_settings.kafka.topic_prefix + "two."
    base = kafka_settings.model_copy(update={"kafka": kafka_settings.kafka.model_copy(update={"topic_prefix": prefix})})
    asyncio.run(ensure_topics(base, partitions=PARTITIONS, keep_all=True))
    first, middle, last, want_o, want_g = [], [], [], {}, {}
    by_partition: dict[int, set[str]] = {p: set() for p in range(PARTITIONS)}
    late: set[str] = set()  # groups of the middle part
    s = _settings(base, "w")
    for n, (capture, venue) in enumerate(CAPTURES):
        events = _events(shared_data, capture, venue)
        actions = make_actions(events, every_s=1.0, seed=n + 1, exchange=venue)
        o, g = expected(events, actions, s.reward, s.groups)
        want_o.update(o)
        want_g.update(g)
        by_partition[_partition(events[0].symbol)].update(g)
        t_half, t_tail = events[len(events) // 2].ts_event, events[-1].ts_event - TAIL_S * S
        for part, lo, hi in ((first, 0, t_half), (middle, t_half, t_tail), (last, t_tail, 1 << 62)):
            part += [("market.events", e) for e in events if lo <= e.ts_event < hi]
            part += [("agent.actions", a) for a in actions if lo <= a.ts_event < hi]
        late.update(a.group_id for a in actions if t_half <= a.ts_event < t_tail)
    assert all(by_partition.values()), "the symbols must spread over both partitions"
    return base, (first, middle, last), want_o, want_g, by_partition, late


def _groups_until(s, done, timeout: float):
    async def go():
        async with Collector(s, ["learn.groups", "agent.outcomes"]) as c:
            ok = await c.until(done, timeout=timeout)
            return ok, c
    return run(go())


def _ids(records) -> set[str]:
    return {g.group_id for g in records["learn.groups"]}


def _owned(worker: Worker, topic: str, since: int = 0) -> set[int]:
    """Market partitions the worker started since its last revocation (its current assignment)."""
    lines = worker.lines[since:]
    last = max((i for i, line in enumerate(lines) if "partitions revoked" in line), default=-1)
    return {int(line.split(f"{topic}:", 1)[1].split()[0]) for line in lines[last + 1:]
            if f"symbols: {topic}:" in line and "resumes at offset" in line}


def test_two_workers_share_the_partitions_and_one_killed_loses_no_group(kafka_settings, shared_data, tmp_path):
    base, (first, middle, last), want_o, want_g, by_partition, late = _case(kafka_settings, shared_data)
    s1, s2 = _settings(base, "w1"), _settings(base, "w2")
    market = topic_name("market.events", base.kafka.topic_prefix)
    run(produce(base, first))
    w1 = Worker(s1, write_config(s1, tmp_path / "w1.yaml")).start()
    w2 = Worker(s2, write_config(s2, tmp_path / "w2.yaml"))
    try:
        w1.wait_ready()
        # the first worker alone holds market state of both partitions before the second joins
        ok, _ = _groups_until(base, lambda r: all(_ids(r) & by_partition[p] for p in by_partition), timeout=120)
        assert ok, "no groups from the first worker\n" + "".join(w1.lines[-40:])
        joined_at = len(w1.lines)
        w2.start()
        w2.wait_ready()
        # the second worker takes one partition from the running first one and rebuilds its book
        moved = w2.wait_for(rf"market state of {market}:(\d+) rebuilt from offsets")
        q = int(moved.group(1))
        w2.wait_for(rf"symbols: {market}:{q} resumes at offset")
        w1.wait_for("partitions revoked", since=joined_at)
        kept = 1 - q
        w1.wait_for(rf"symbols: {market}:{kept} resumes at offset", since=joined_at)
        assert _owned(w2, market) == {q} and _owned(w1, market, since=joined_at) == {kept}

        run(produce(base, middle))
        # kill the second worker once it has closed a group of the middle part on its partition
        ok, c = _groups_until(base, lambda r: _ids(r) & late & by_partition[q], timeout=120)
        assert ok, "the second worker closed no group of the middle part\n" + "".join(w2.lines[-40:])
        killed_at = len(w1.lines)
        w2.kill9()
        before = len(_ids(c.records) & by_partition[q])
        run(produce(base, last))  # input goes on arriving while the partition has no owner
        # the survivor takes the partition back after the session timeout and rebuilds its book
        w1.wait_for(rf"market state of {market}:{q} rebuilt from offsets", since=killed_at, timeout=120)
        w1.wait_for(rf"symbols: {market}:{q} resumes at offset", since=killed_at)

        ok, c = _groups_until(base, lambda r: _ids(r) >= set(want_g), timeout=180)
        missing = sorted(set(want_g) - _ids(c.records))
        assert ok, f"{len(missing)} of {len(want_g)} groups missing: {missing[:12]}\n" + "".join(w1.lines[-40:])
        assert before < len(by_partition[q]), "the killed worker had finished its partition: the test proves nothing"
        raw = c.records["learn.groups"]
        groups = {}
        for g in raw:
            groups.setdefault(g.event_id, g)
        print(f"groups: {before} of {len(by_partition[q])} of the killed worker's partition before the kill, "
              f"{len(raw)} raw, {len(groups)} after event_id dedupe, {len(want_g)} expected")
        assert sorted(g.group_id for g in groups.values()) == sorted(want_g)  # none missing, none doubled
        for g in groups.values():
            assert comparable(g) == comparable(want_g[g.group_id]), g.group_id
        outcomes = {}
        for o in c.records["agent.outcomes"]:
            outcomes.setdefault(o.event_id, o)
        assert sorted((o.group_id, o.candidate_index) for o in outcomes.values()) == sorted(want_o)
        for o in outcomes.values():
            assert comparable(o) == comparable(want_o[(o.group_id, o.candidate_index)]), o.event_id
    finally:
        w2.stop()
        w1.stop()


def test_other_routers_are_behind_until_their_persisted_cursor_or_committed_offset_reaches_the_end(kafka_settings):
    """``streams.routers``: a router is caught up when the cursor it persisted (the last record of
    its changelog partition) or its group's committed offset is at the end of its partition."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from daemon.eventlog.connection import client_kwargs
    from streams.routers import RouterBacklog

    kw = client_kwargs(kafka_settings)
    prefix = kafka_settings.kafka.topic_prefix
    actions, changelog, group = prefix + "r.actions", prefix + "r.cursors-changelog", prefix + "r.group"

    async def go() -> list[bool]:
        admin = AIOKafkaAdminClient(**kw)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(actions, 2, 1), NewTopic(changelog, 2, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(**kw)
        await producer.start()
        routers = RouterBacklog(kw, group, actions, 2, changelog)
        seen = []
        try:
            for p in (0, 1):
                for _ in range(3):
                    await producer.send_and_wait(actions, b"{}", partition=p)
            seen.append(await routers.probe(set()))  # nobody has routed anything
            await producer.send_and_wait(changelog, b"3", key=b'"a|0"', partition=0)
            await producer.send_and_wait(changelog, b"1", key=b'"a|1"', partition=1)
            seen.append(await routers.probe(set()))  # partition 1's router is two records short
            seen.append(await routers.probe({1}))  # ... but that one is this worker's
            committer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **kw)
            await committer.start()
            try:
                committer.assign([TopicPartition(actions, 1)])
                await committer.commit({TopicPartition(actions, 1): 3})
            finally:
                await committer.stop()
            seen.append(await routers.probe(set()))  # its group committed the end: caught up
        finally:
            await routers.stop()
            await producer.stop()
        return seen

    assert asyncio.run(go()) == [True, True, False, False]


def test_a_partition_revoked_while_its_book_is_rebuilt_is_not_started():
    """A rebalance that lands while the timer or the agent awaits a rebuild: the partitions of
    that start are not marked started, so the next assignment rebuilds them again (into the
    fresh engine) instead of processing on a book that was dropped."""
    from streams.agents import InputGuard
    from streams.cursor import InputCursor, cursor_key

    class Consumer:
        async def earliest_offsets(self, *tps):
            return {tp: 0 for tp in tps}

    class App:
        consumer = Consumer()

    store = {cursor_key(("market", 0)): 50, cursor_key(("internal", 0)): 7}
    rebuilt = []

    async def rebuild(tp, cursor, earliest, mark):
        rebuilt.append((tp, cursor))
        if len(rebuilt) == 1:
            guard.forget_all()  # the revocation arrives while the log is read

    guard = InputGuard(App(), InputCursor(store), "symbols", state_topic="market", rebuild=rebuild)

    async def go():
        await guard.start([("internal", 0)])
        assert not guard.cursor.started(("internal", 0)) and not guard.cursor.started(("market", 0))
        await guard.start([("internal", 0)])  # assigned again
        assert guard.cursor.next == {("internal", 0): 7, ("market", 0): 50}

    asyncio.run(go())
    assert rebuilt == [(("market", 0), 50), (("market", 0), 50)]
