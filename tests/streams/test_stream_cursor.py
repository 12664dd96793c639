"""The agents' input cursor without Kafka: which offsets are processed, skipped or sought back to."""

from __future__ import annotations

import random
from collections import Counter

from streams.cursor import GAP, PROCESS, REPLAYED, InputCursor, cursor_key

TP = ("t.market.events", 2)


def test_fresh_start_processes_from_the_first_offset_and_refuses_a_hole():
    c = InputCursor({}, reseek_after_s=5.0)
    assert not c.started(TP)
    assert c.start(TP, earliest=0) == 0
    for off in (0, 1):
        assert c.check(TP, off) == PROCESS
        c.done(TP, off)
    assert c.check(TP, 7) == GAP  # 2..6 never delivered
    assert c.seek_target(TP, now=100.0) == 2
    assert c.check(TP, 8) == GAP and c.seek_target(TP, now=101.0) is None  # already asked: wait for it
    assert c.overdue(now=104.0) == []
    assert c.overdue(now=105.0) == [TP]
    assert c.seek_target(TP, now=105.0) == 2  # still not there: ask again
    assert c.check(TP, 1) == REPLAYED
    assert c.check(TP, 2) == PROCESS
    assert c.counters == {"refused_past_hole": 2, "seeks": 2, "replayed_skipped": 1}


def test_restart_resumes_at_the_persisted_cursor_not_before_the_first_offset():
    c = InputCursor({cursor_key(TP): 10})
    assert c.start(TP, earliest=0) == 10
    assert c.check(TP, 3) == REPLAYED  # committed offset behind the cursor: already on the broker
    assert c.check(TP, 10) == PROCESS
    retained = InputCursor({cursor_key(TP): 10})
    assert retained.start(TP, earliest=20) == 20  # older records deleted by retention


def test_persist_writes_only_a_flushed_snapshot_of_one_partition_number():
    store: dict = {}
    c = InputCursor(store, persist_every_s=1.0)
    other = ("t.actions-by-symbol", 2)
    elsewhere = ("t.market.events", 0)
    for tp in (TP, other, elsewhere):
        c.start(tp, earliest=0)
        c.done(tp, 4)
    assert c.persist_due(2, now=0.0)
    snap = c.snapshot(2)
    c.done(TP, 5)  # processed while the producer flushed: not covered by the snapshot
    c.persist(snap, 2, now=0.0)
    assert store == {cursor_key(TP): 5, cursor_key(other): 5}
    assert not c.persist_due(2, now=0.5)
    assert c.persist_due(2, now=1.0)
    assert c.persist_due(0, now=0.0)
    burst = InputCursor({}, persist_every_s=60.0, persist_every_n=3)
    burst.start(TP, earliest=0)
    burst.done(TP, 0)
    burst.persist(burst.snapshot(2), 2, now=0.0)
    burst.done(TP, 1)
    burst.done(TP, 2)
    assert not burst.persist_due(2, now=1.0)
    burst.done(TP, 3)
    assert burst.persist_due(2, now=1.0)  # a burst shorter than persist_every_s still gets written


def test_records_deleted_before_they_were_processed_are_skipped_and_counted():
    c = InputCursor({cursor_key(TP): 10})
    c.start(TP, earliest=0)
    assert c.skip_to(TP, earliest=5) is None  # nothing lost: the cursor is past the log start
    assert c.skip_to(TP, earliest=25) == 10
    assert c.next[TP] == 25 and c.counters["deleted_before_processed"] == 15
    assert c.check(TP, 25) == PROCESS


def test_forgotten_partitions_resume_from_the_store():
    c = InputCursor({cursor_key(TP): 3})
    c.start(TP, earliest=0)
    c.done(TP, 3)
    c.done(TP, 4)
    c.forget([TP])
    assert not c.started(TP)
    assert c.start(TP, earliest=0) == 3


def test_a_consumer_that_drops_repeats_and_restarts_still_gets_every_offset_processed_once():
    """A faulty delivery model: dropped batches, re-deliveries, a partition that stops, and
    crashes that restart from a commit past a hole. Driven by the cursor, the effects are each
    offset exactly once, in order (after a crash only what the store covers survives)."""
    rng = random.Random(7)
    n = 5_000
    store: dict = {}
    effects: list[int] = []
    c = InputCursor(store, persist_every_s=0.0)
    pos, committed, now = 0, 0, 0.0
    seen: Counter = Counter()
    for _step in range(100_000):
        if c.started(TP) and c.next[TP] >= n:
            break
        now += 1.0
        roll = rng.random()
        if roll < 0.02:
            pos += rng.randint(1, 50)  # a fetched batch dropped
        elif roll < 0.04:
            pos = max(0, pos - rng.randint(1, 50))  # a re-delivery
        elif roll < 0.05:
            seen.update(c.counters)
            c = InputCursor(store, persist_every_s=0.0)  # kill -9: effects past the store are lost
            del effects[store.get(cursor_key(TP), 0):]
            pos = committed
        if not c.started(TP):
            c.start(TP, earliest=0)
        if pos >= n:  # nothing more arrives: the stall watch asks for a seek
            pos = c.seek_target(TP, now) or pos
            continue
        verdict = c.check(TP, pos)
        if verdict == PROCESS:
            effects.append(pos)
            c.done(TP, pos)
            if rng.random() < 0.1:
                c.persist(c.snapshot(TP[1]), TP[1], now)
        elif verdict == GAP:
            target = c.seek_target(TP, now)
            if target is not None:
                pos = target
                continue
        committed = max(committed, pos + 1)  # Faust acks whatever it handed out, holes included
        pos += 1
    assert effects == list(range(n))
    seen.update(c.counters)
    assert seen["seeks"] > 10 and seen["replayed_skipped"] > 10 and seen["refused_past_hole"] > 10
