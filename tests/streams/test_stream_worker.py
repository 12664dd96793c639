"""The real Faust worker process against the real broker, fed recorded Binance data.

Consumers dedupe outputs by ``event_id`` (the documented contract, see ``streams.app``); the
tests do the same, and the kill test also reports how many raw duplicates there were.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from aiokafka import AIOKafkaConsumer

from schemas import Action, MarketActionSpec
from schemas.settings import GroupConfig, RewardConfig, StreamsSettings
from schemas.topics import topic_name
from stream_cases import comparable, expected, make_actions, market_events
from worker_harness import Collector, Worker, produce, run, write_config

pytestmark = pytest.mark.kafka
S = 1_000_000_000


def _settings(kafka_settings):
    return kafka_settings.model_copy(update={
        "reward": RewardConfig(fee_bps=4.5, slippage_model="spread", slippage_bps=0.5),
        "groups": GroupConfig(group_size=4, grace_s=1.0, partial="keep", min_partial=2),
        "streams": StreamsSettings(idle_tick_s=0.25),
    })


def _dedupe(records):
    seen = {}
    for r in records:
        seen.setdefault(r.event_id, r)
    return list(seen.values())


def _live_events(shared_data, seconds):
    """A capture slice shifted so that its last event is 'now', ingested now (a live feed)."""
    probe = market_events(shared_data, seconds=seconds)
    now = time.time_ns()
    shift = now - probe[-1].ts_event
    return market_events(shared_data, seconds=seconds, shift_ns=shift, ingest_ns=now)


def _probe(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_worker_matches_pure_functions_and_closes_idle_windows(kafka_settings, shared_data, tmp_path):
    s = _settings(kafka_settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = s.model_copy(update={"streams": s.streams.model_copy(update={"web_port": port})})
    worker = Worker(s, write_config(s, tmp_path / "cfg.yaml")).start()
    try:
        worker.wait_ready()
        # liveness and readiness (the Helm chart's probes) on the worker's web port
        assert _probe(port, "/healthz") == (200, {"status": "ok", "stalled": {}})
        assert _probe(port, "/readyz") == (200, {"status": "ready", "stalled": {}})
        events = _live_events(shared_data, 40)
        actions = make_actions(events, drop={(3, 2)})
        junk = [("market.events", b"\xff\xfenot json"), ("agent.actions", b'{"type": "agent.action"}')]
        run(produce(s, [("market.events", e) for e in events] + [("agent.actions", a) for a in actions], raw=junk))
        want_o, want_g = expected(events, actions, s.reward, s.groups)

        async def collect():
            async with Collector(s, ["agent.outcomes", "learn.groups", "deadletter"]) as c:
                ok = await c.until(lambda r: {g.group_id for g in r["learn.groups"]} >= set(want_g)
                                   and len(r["deadletter"]) >= 2, timeout=90)
                if not ok:
                    return ok, c
                # the backlog is processed; now an idle group: decided now, one candidate missing,
                # so it can only close when its window expires, and no market event comes after it
                t0 = time.time_ns()
                idle = [Action(group_id="idle", candidate_index=i, group_size=3, policy_version=1, seed=i, prompt_id="pi",
                               symbol=events[0].symbol, exchange="binance", prompt="idle", completion=f"c{i}",
                               parsed=MarketActionSpec(side=side, size=1.0, horizon_s=1.0), ts_event=t0, key="idle")
                        for i, side in ((0, "long"), (1, "short"))]
                await produce(s, [("agent.actions", a) for a in idle])
                ok = await c.until(lambda r: any(g.group_id == "idle" for g in r["learn.groups"]), timeout=30)
                return ok, c

        ok, c = run(collect())
        assert ok, f"missing: {set(want_g) | {'idle'} - {g.group_id for g in c.records['learn.groups']}}" + "".join(worker.lines[-80:])
        assert worker.alive()
        groups = {g.group_id: g for g in _dedupe(c.records["learn.groups"])}
        outcomes = {(o.group_id, o.candidate_index): o for o in _dedupe(c.records["agent.outcomes"])}
        for gid, g in want_g.items():
            assert comparable(groups[gid]) == comparable(g), gid
        for k, o in want_o.items():
            assert comparable(outcomes[k]) == comparable(o), k
        assert groups["g1-0003"].status == "partial"
        reasons = sorted(d.reason for d in c.records["deadletter"])
        assert any("not valid JSON" in r for r in reasons) and len(reasons) == 2
        # the idle window: closed by the wall-clock timer within 1 s of its end, no event needed
        g = groups["idle"]
        assert g.close_reason == "expired" and g.candidate_indices == [0, 1]
        lag_s = (g.ts_ingest - g.window_end_ns) / 1e9
        arrival_lag_s = (c.arrival[g.event_id] - g.window_end_ns) / 1e9
        print(f"idle window close lag: {lag_s:.3f}s (arrival {arrival_lag_s:.3f}s)")
        assert 0 <= lag_s <= 1.0 and arrival_lag_s <= 1.0
    finally:
        worker.stop()


def _groups_before_kill(s) -> tuple[bool, int]:
    """Wait for the first 10 groups; how many distinct ones were out by then."""
    async def some_groups():
        async with Collector(s, ["learn.groups"]) as c:
            ok = await c.until(lambda r: len(r["learn.groups"]) >= 10, timeout=60)
            return ok, len({g.group_id for g in c.records["learn.groups"]})
    return run(some_groups())


def _after_restart(s, want_g, timeout: float):
    """Collect groups and outcomes until every expected group is in (or the timeout)."""
    async def all_groups():
        async with Collector(s, ["learn.groups", "agent.outcomes"]) as c:
            ok = await c.until(lambda r: {g.group_id for g in r["learn.groups"]} >= set(want_g), timeout=timeout)
            return ok, c
    return run(all_groups())


def _assert_nothing_lost(ok, c, want_o, want_g, before: str = "") -> None:
    raw = c.records["learn.groups"]
    groups = _dedupe(raw)
    print(f"groups: {before}{len(raw)} raw, {len(groups)} after event_id dedupe, {len(want_g)} expected")
    assert ok
    assert sorted(g.group_id for g in groups) == sorted(want_g)  # none missing, one per event_id
    for g in groups:
        assert comparable(g) == comparable(want_g[g.group_id]), g.group_id
    outs = {(o.group_id, o.candidate_index): o for o in _dedupe(c.records["agent.outcomes"])}
    assert set(outs) == set(want_o) and len(_dedupe(c.records["agent.outcomes"])) == len(want_o)


def _recorded_case(kafka_settings, shared_data, tmp_path, seconds: float):
    """Settings and their config file, ``seconds`` of capture with a group every second, and the
    pure functions' outcomes and groups for them."""
    s = _settings(kafka_settings)
    events = market_events(shared_data, seconds=seconds)
    actions = make_actions(events, every_s=1.0)
    return s, write_config(s, tmp_path / "cfg.yaml"), events, actions, *expected(events, actions, s.reward, s.groups)


def _halves(events, actions):
    """The input split at the middle market record: (first, rest) for ``produce``, candidates by
    event time on the same side as their market data."""
    half = len(events) // 2
    t_half = events[half].ts_event
    first = [("market.events", e) for e in events[:half]] + [("agent.actions", a) for a in actions
                                                             if a.ts_event <= t_half]
    rest = [("market.events", e) for e in events[half:]] + [("agent.actions", a) for a in actions
                                                            if a.ts_event > t_half]
    return first, rest


def test_kill9_and_restart_loses_no_group_and_duplicates_only_by_event_id(kafka_settings, shared_data, tmp_path):
    s, cfg, events, actions, want_o, want_g = _recorded_case(kafka_settings, shared_data, tmp_path, 90)
    first, rest = _halves(events, actions)
    worker = Worker(s, cfg).start()
    try:
        worker.wait_ready()
        run(produce(s, first))
        assert _groups_before_kill(s)[0], "no groups before the kill"
        worker.kill9()  # mid-stream: state and offsets since the last commit are in flight
        run(produce(s, rest))
        worker.start()
        worker.wait_ready()
        ok, c = _after_restart(s, want_g, timeout=90)
        _assert_nothing_lost(ok, c, want_o, want_g)
    finally:
        worker.stop()


def test_kill9_in_catch_up_loses_no_group(kafka_settings, shared_data, tmp_path):
    # the whole input is in the log before the worker starts, so the kill lands in catch-up: a
    # pause in the input instead would be an idle live stream, whose windows the wall-clock timer
    # rightly closes (streams.engine.Clock), and the test would measure that, not the restart
    s, cfg, events, actions, want_o, want_g = _recorded_case(kafka_settings, shared_data, tmp_path, 240)
    run(produce(s, [("market.events", e) for e in events] + [("agent.actions", a) for a in actions]))
    worker = Worker(s, cfg).start()
    try:
        worker.wait_ready()
        ok, before = _groups_before_kill(s)
        assert ok, "no groups before the kill"
        worker.kill9()  # mid-stream: state and offsets since the last commit are in flight
        assert before < len(want_g), "the worker finished before the kill: the test proves nothing"
        worker.start()
        worker.wait_ready()
        ok, c = _after_restart(s, want_g, timeout=120)
        missing = sorted(set(want_g) - {g.group_id for g in c.records["learn.groups"]})
        assert ok, f"{len(missing)} of {len(want_g)} groups missing after the restart: {missing[:12]}\n" + \
            "".join(worker.lines[-40:])
        _assert_nothing_lost(ok, c, want_o, want_g, before=f"{before} before the kill, ")
    finally:
        worker.stop()


async def _commit_past(s, topic: str, ahead: int) -> dict[int, tuple[int, int]]:
    """Commit the worker's group ``ahead`` records past its committed offset on every partition
    of ``topic`` that still has input: what Faust does when its consumer skipped records.
    Returns partition -> (committed before, committed now)."""
    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient
    from daemon.eventlog.connection import client_kwargs
    from streams.app import faust_app_id

    client = AIOKafkaClient(**client_kwargs(s))
    await client.bootstrap()
    try:
        parts = (await client.fetch_all_metadata()).partitions_for_topic(topic) or ()
    finally:
        await client.close()
    c = AIOKafkaConsumer(group_id=faust_app_id(s), enable_auto_commit=False, **client_kwargs(s))
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        moved = {}
        for tp in tps:
            before = await c.committed(tp) or 0
            if before + ahead < ends[tp]:
                moved[tp.partition] = (before, before + ahead)
        if moved:
            await c.commit({TopicPartition(topic, p): new for p, (_, new) in moved.items()})
        return moved
    finally:
        await c.stop()


def test_a_commit_past_unprocessed_input_loses_nothing(kafka_settings, shared_data, tmp_path):
    """The consumer's committed offset is not trusted: the agents resume from their own
    persisted input cursors and seek back over a hole (streams.cursor)."""
    s, cfg, events, actions, want_o, want_g = _recorded_case(kafka_settings, shared_data, tmp_path, 120)
    first, rest = _halves(events, actions)
    run(produce(s, first))
    worker = Worker(s, cfg).start()
    try:
        worker.wait_ready()
        assert _groups_before_kill(s)[0], "no groups before the stop"
        worker.stop()  # a clean stop: offsets committed, the group left, so the commit below is accepted
        run(produce(s, rest))
        moved = run(_commit_past(s, topic_name("market.events", s.kafka.topic_prefix), ahead=2000))
        assert moved, "no partition with 2000 unread records"
        worker.start()
        worker.wait_ready()
        ok, c = _after_restart(s, want_g, timeout=120)
        _assert_nothing_lost(ok, c, want_o, want_g)
        assert any("market.events" in line and "seeking back" in line for line in worker.lines), \
            "the hole was never sought back: " + "".join(worker.lines[-20:])
    finally:
        worker.stop()


def test_a_worker_in_catch_up_and_then_at_the_end_of_its_input_is_not_stopped_as_stalled(kafka_settings, shared_data,
                                                                                            tmp_path):
    """Partitions that wait behind a backlog, then input read to the end, with a stall limit far below
    the catch-up time: the worker works through it all and then idles, without a stall exit."""
    s, _, events, actions, _, want_g = _recorded_case(kafka_settings, shared_data, tmp_path, 300)
    s = s.model_copy(update={"streams": s.streams.model_copy(update={"stall_after_s": 1.0, "stall_exit_s": 4.0})})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = s.model_copy(update={"streams": s.streams.model_copy(update={"web_port": port})})
    run(produce(s, [("market.events", e) for e in events] + [("agent.actions", a) for a in actions]))
    worker = Worker(s, write_config(s, tmp_path / "cfg.yaml")).start()
    try:
        worker.wait_ready()
        ok, c = _after_restart(s, want_g, timeout=180)
        assert ok and worker.stall_exits == 0, f"stall exits: {worker.stall_exits}\n" + "".join(worker.lines[-40:])
        # how long partitions waited their turn (past stall_exit_s, a worker before the fix exited)
        waits = [float(m.group(1)) for m in (re.search(r"stalled ([0-9.]+) s behind", line) for line in worker.lines)
                 if m]
        print(f"longest wait of a partition in catch-up: {max(waits, default=0.0)} s")
        # read to the end: idle, and still up and live well past stall_exit_s
        deadline = time.monotonic() + 3 * s.streams.stall_exit_s
        while time.monotonic() < deadline:
            assert worker.alive() and worker.stall_exits == 0, "".join(worker.lines[-40:])
            assert _probe(port, "/healthz")[0] == 200
            time.sleep(0.25)  # polling interval of an observation window
        assert _probe(port, "/readyz") == (200, {"status": "ready", "stalled": {}})
    finally:
        worker.stop()
