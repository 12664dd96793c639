"""Market state from the log: the book is not changelogged; after a restart it
is rebuilt by reading the market partition again from the persisted book mark up to the input
cursor, the agenda is derived from the pending candidates, outcomes scored before the kill are
scored again on the rebuilt book, and the groups the worker then emits equal what an
uninterrupted one emits, which equals the pure functions' result."""

from __future__ import annotations

import asyncio

import pytest

from schemas import BookTicker, MarketWatermark, decode, encode
from schemas.settings import GroupConfig, RewardConfig
from schemas.topics import topic_name
from streams.engine import SymbolEngine, tick_record
from streams.rebuild import rebuild_partition
from stream_cases import comparable, expected, live_feed, make_actions, market_events, run_feed
from worker_harness import Worker, produce, run

S = 1_000_000_000
TP = ("market.events", 0)
REWARD = RewardConfig(fee_bps=4.5, slippage_model="spread", slippage_bps=0.5)
GROUPS = GroupConfig(group_size=4, grace_s=1.0, partial="keep", min_partial=2)


def _engine(**kw) -> SymbolEngine:
    return SymbolEngine(REWARD, GROUPS, pending={}, agenda={}, closed={}, market_window_s=10.0, **kw)


def _close_idle(engine: SymbolEngine, wall: int) -> list:
    return [e for _sym, sk, now in engine.idle_due(wall)
            for e in engine.on_internal(tick_record(sk, now), topic="internal", wall_ns=wall)]


def _groups(emits) -> dict:
    return {g.group_id: g for g in (decode(e.value) for e in emits if e.topic == "learn.groups")}


@pytest.mark.parametrize("hold", [False, True])
def test_a_book_rebuilt_from_the_mark_gives_the_groups_of_an_uninterrupted_engine(shared_data, hold):
    """Kill at a cursor mid-feed: a fresh engine gets the small state (pending, agenda, closed) as
    recovered from changelogs and the book only from the log, from the mark to the cursor. With
    ``hold`` the book was held back past the window (a candidate backlog in catch-up), which the
    mark covers too."""
    events = market_events(shared_data, seconds=60)
    actions = make_actions(events, every_s=1.0)
    feed = live_feed(events, actions)
    cut = next(i for i, (ts, kind, _, off) in enumerate(feed) if kind == 0 and off >= len(events) // 2)
    cursor = feed[cut][3]  # next market offset to process

    whole = _engine()
    whole.hold_expiry = hold
    want = run_feed(whole, feed)
    want += _close_idle(whole, events[-1].ts_event + 30 * S)

    first = _engine()
    first.hold_expiry = hold
    before = run_feed(first, feed[:cut])
    mark = first.book_start(TP)
    assert mark is not None and (mark == 0) == hold  # unheld, the window has expired the oldest quotes
    restarted = _engine()  # market state and agenda: nothing survives the kill
    restarted.pending.update(first.pending)  # recovered from their changelogs
    restarted.closed.update(first.closed)
    restarted.restore_agenda()
    # the same windows; outcomes scored before the kill are due again (scored again, same event_id)
    for sk, entry in first.agenda.items():
        again = restarted.agenda[sk]
        windows = lambda e: {g: (v.window_end_ns, v.grace_end_wall_ns) for g, v in e.groups.items()}  # noqa: E731
        assert windows(again) == windows(entry)
        assert all(again.groups[g].due_ns <= v.due_ns for g, v in entry.groups.items())
    restarted.hold_expiry = True  # as the worker does while it rebuilds
    for i in range(mark, cursor):
        restarted.rebuild_record(encode(events[i]), topic=TP[0], partition=TP[1], offset=i, wall_ns=0)
    restarted.hold_expiry = hold
    assert {k: v for k, v in restarted.book.items() if v} == {k: v for k, v in first.book.items() if v}
    after = run_feed(restarted, feed[cut:])
    after += _close_idle(restarted, events[-1].ts_event + 30 * S)

    got, uninterrupted = _groups(before + after), _groups(want)
    assert sorted(got) == sorted(uninterrupted)
    _, pure = expected(events, actions, REWARD, GROUPS)
    assert sorted(got) == sorted(pure)
    for gid, g in got.items():
        assert comparable(g) == comparable(uninterrupted[gid]) == comparable(pure[gid]), gid


def test_a_rebuilt_engine_keeps_the_event_time_trades_and_watermarks_had_reached(shared_data):
    """The market partition ends with a watermark past the last quote (a finite replay's end) and
    the candidates are routed only after it (a router behind the market): each group is final
    the moment its last candidate arrives. A worker restarted at that cursor must close them the
    same way; with event time restored from the last quote only, they would wait for market data
    that never comes."""
    events = market_events(shared_data, seconds=30)
    last = events[-1]
    end = MarketWatermark(exchange=last.exchange, symbol=last.symbol, ts_event=last.ts_event + 20 * S,
                          ts_ingest=last.ts_ingest, source="replay", key=last.symbol, reason="end of input")
    market = [*events, end]
    actions = make_actions(market, every_s=2.0)
    last_quote = max(e.ts_event for e in events if isinstance(e, BookTicker))
    only_final_by_watermark = [a for a in actions if a.parsed is not None
                               and a.ts_event + round(a.parsed.horizon_s * S) > last_quote]
    assert only_final_by_watermark, "the case needs groups whose horizon ends after the last quote"
    market_feed = [(e.ts_event, 0, encode(e), i) for i, e in enumerate(market)]
    late_candidates = [(end.ts_event, 1, encode(a), -1) for a in actions]

    whole = _engine()
    want = _groups(run_feed(whole, market_feed + late_candidates))
    first = _engine()
    run_feed(first, market_feed)
    restarted = _engine()
    restarted.hold_expiry = True
    for i in range(first.book_start(TP) or 0, len(market)):
        restarted.rebuild_record(encode(market[i]), topic=TP[0], partition=TP[1], offset=i, wall_ns=end.ts_event)
    restarted.hold_expiry = False
    sk = next(iter(restarted.index))
    assert restarted.clock.watermark(sk) == first.clock.watermark(sk) == end.ts_event
    got = _groups(run_feed(restarted, late_candidates))
    assert sorted(got) == sorted(want) and {a.group_id for a in only_final_by_watermark} <= set(got)
    for gid, g in got.items():
        assert comparable(g) == comparable(want[gid]), gid


def test_the_mark_is_the_oldest_quote_held_and_a_lost_partition_is_forgotten(shared_data):
    events = market_events(shared_data, seconds=30)
    eng = _engine()
    run_feed(eng, live_feed(events, []))
    held = [q for quotes in eng.book.values() for q in quotes]
    assert eng.book_start(TP) == min(q[5] for q in held)
    assert eng.book_start(("market.events", 1)) is None
    eng.forget_market(TP)
    assert not eng.book and not eng.index and eng.book_start(TP) is None


@pytest.mark.kafka
def test_rebuild_reads_the_log_from_the_mark_or_the_window(kafka_settings, shared_data):
    """Against the broker: from a mark, exactly [mark, cursor); with no mark, from the record
    timestamps of the window (plus as much again) before the cursor."""
    from daemon.eventlog.connection import client_kwargs

    events = market_events(shared_data, seconds=120)
    run(produce(kafka_settings, [("market.events", e) for e in events]))
    topic = topic_name("market.events", kafka_settings.kafka.topic_prefix)
    sym_partition = _partition_with_data(kafka_settings, topic)
    kw = client_kwargs(kafka_settings)
    seen: list[int] = []

    def feed(raw, *, topic, partition, offset):
        seen.append(offset)

    first, n = asyncio.run(rebuild_partition(kw, (topic, sym_partition), 5000, 0, 1234, 10.0, feed))
    assert (first, n) == (1234, 5000 - 1234) and seen == list(range(1234, 5000))
    seen.clear()
    first, n = asyncio.run(rebuild_partition(kw, (topic, sym_partition), 5000, 0, None, 10.0, feed))
    # no mark: 20 s of record time before offset 4999, which is well inside the log
    assert 0 < first < 4999 and seen == list(range(first, 5000))
    t_last = events[4999].ts_ingest
    assert events[first].ts_ingest >= t_last - 20 * S and (first == 0 or events[first - 1].ts_ingest < t_last - 20 * S)
    seen.clear()
    assert asyncio.run(rebuild_partition(kw, (topic, sym_partition), 0, 0, None, 10.0, feed)) == (0, 0) and not seen


def _partition_with_data(settings, topic: str) -> int:
    """The one partition the single symbol's events went to."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from daemon.eventlog.connection import client_kwargs

    async def find() -> int:
        c = AIOKafkaConsumer(enable_auto_commit=False, **client_kwargs(settings))
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())] or \
                [TopicPartition(topic, p) for p in range(3)]
            ends = await c.end_offsets(tps)
            return next(tp.partition for tp in tps if ends[tp] > 0)
        finally:
            await c.stop()
    return asyncio.run(find())
