"""The fault-injection scenario: a recorded replay through the real broker, Faust worker,
analytics sink and daemon, under kill -9s, a broker restart and malformed input.

Phases, so every figure is exact:
1. start everything (own broker: it gets restarted) and wait for the daemon;
2. inject malformed websocket frames; wait until each is a dead letter in Kafka;
3. inject malformed Kafka records; wait until each is dead-lettered (by source coordinates);
4. chaos: kill -9 the daemon, the streams worker or the sink, spread from the first group learnt
   to the end of the replay, a third or more of the daemon kills inside its apply or snapshot
   windows (``killer``; the supervisor restarts them), and restart the broker once half-way;
5. let the replay finish and every group close, the learner catch up, then stop gracefully.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiokafka import AIOKafkaProducer

from daemon.ops import kafka_local

from daemon.eventlog import broker_address
from daemon.eventlog import read_range
from daemon.eventlog.admin import ensure_topics
from daemon.eventlog.connection import client_kwargs, topic
from daemon.ops.supervisor import Child, child_env
from daemon.service.learner_loop import model_checksum
from schemas import Action, DeadLetter, GRPOGroup, SnapshotMarker
from schemas.settings import (ActorSettings, GroupConfig, GuardSettings, HttpSettings, KafkaSettings, LearnerSettings,
                              Settings)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import TINY_LEARNER, clean_replay, daemon_status, install_snapshot, write_config  # noqa: E402
from killer import Killer, MarkingSupervisor, Moments, report  # noqa: E402

EIGENLOOP = str(Path(sys.executable).parent / "eigenloop")


@dataclass
class Figures:
    kills: dict[str, int] = field(default_factory=lambda: {"daemon": 0, "streams": 0, "sink": 0})
    restarts: dict[str, int] = field(default_factory=dict)
    broker_restarts: int = 0
    ws_frames_injected: int = 0
    kafka_records_injected: int = 0
    ws_dead_letters: int = 0
    kafka_dead_letters: int = 0
    actions: int = 0
    duplicate_actions: int = 0
    groups: int = 0
    lost_groups: int = 0
    policy_version: int = 0
    checksum_matches: bool = False
    alive_at_end: dict[str, bool] = field(default_factory=dict)
    wall_s: float = 0.0
    kill_report: dict = field(default_factory=dict)  # ``killer.report``: when, whom, in which state

    def print(self) -> None:
        print("fault-injection figures:", json.dumps({k: v for k, v in self.__dict__.items() if k != "kill_report"},
                                                     indent=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _read(s: Settings, name: str) -> list:
    # the injected malformed records sit in these topics; they are counted through the dead letters
    return [ev async for _, ev in read_range(s, name, isolation_level="read_committed", skip_undecodable=True)]


async def _wait(cond, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await cond()
        if last:
            return last
        await asyncio.sleep(interval)  # polling interval of a deadline loop
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _dead_letter_counts(letters: list[DeadLetter], ws_marker: str) -> tuple[int, int]:
    ws = {d.raw for d in letters if ws_marker in d.raw}
    kafka = {(d.source_topic, d.partition, d.offset) for d in letters
             if d.partition >= 0 and b"chaos-bad" in d.raw_bytes()}
    return len(ws), len(kafka)


async def run_chaos(work: Path, shared_data: Path, initial_snapshot: Path, *, kills: int, ws_frames: int,
                    kafka_records: int, seed: int, speed: float) -> Figures:
    from daemon.tools.capture_servers import ReplayCluster

    rng = random.Random(seed)
    fig = Figures()
    t_start = time.monotonic()
    broker_dir = work / "broker"
    info = await asyncio.to_thread(kafka_local.start, broker_dir)
    port = _free_port()
    cluster = ReplayCluster(shared_data, speed=speed, symbols=["BTC/USDT"], markets=("spot", "usdm"), social=False)
    await cluster.start()
    s = Settings(data_dir=work / "data", kafka=KafkaSettings(bootstrap=info.bootstrap, topic_prefix="chaos."),
                 learner=LearnerSettings(config=TINY_LEARNER, snapshot_every_updates=4, device="cpu"),
                 http=HttpSettings(port=port), groups=GroupConfig(group_size=4, grace_s=1.0),
                 actor=ActorSettings(cadence_s=2.0, horizon_s=5.0), sources=cluster.sources_settings(),
                 guard=GuardSettings(enabled=False))  # measured only: the checksum must replay
    s.analytics.dsn = f"chdb://{work / 'chdb'}"
    await ensure_topics(s, partitions=3)
    install_snapshot(initial_snapshot, s.data_dir)
    cfg = write_config(s, work / "config.yaml")
    hook_dir = work / "fault-hook"
    hook_dir.mkdir()
    moments = Moments(hook_dir)
    env = child_env({"EIGENLOOP_CONFIG": str(cfg), "OMP_NUM_THREADS": "1", "EIGENLOOP_FAULT_HOOK": str(hook_dir)})
    env = {k: v for k, v in env.items() if k not in ("EIGENLOOP_KAFKA_BOOTSTRAP", "EIGENLOOP_DATA_DIR")}
    sup = MarkingSupervisor(backoff_initial_s=0.5, backoff_max_s=2.0)
    logs = work / "logs"
    try:
        await sup.add(Child("streams", [EIGENLOOP, "streams", "worker"], env, logs / "streams.log"))
        await sup.add(Child("sink", [EIGENLOOP, "analytics", "sink"], env, logs / "sink.log"))
        await sup.add(Child("daemon", [EIGENLOOP, "daemon"], env, logs / "daemon.log", stop_timeout_s=180))

        async def status():
            return await asyncio.to_thread(daemon_status, port)

        await _wait(status, 300, "the daemon to answer")
        await _wait(lambda: _subscribed(cluster), 120, "the daemon's market subscriptions", 0.2)

        # 2. malformed websocket frames, each unique so each dead letter is accounted for
        marker = "chaos-ws-frame"
        for i in range(ws_frames):
            await cluster.binance.inject("spot", "btcusdt@trade", f'{{"{marker}":{i},')
        fig.ws_frames_injected = ws_frames

        async def ws_done():
            n, _ = _dead_letter_counts(await _read(s, "deadletter"), marker)
            return n >= ws_frames
        await _wait(ws_done, 300, f"{ws_frames} websocket dead letters in Kafka", 2.0)

        # 3. malformed Kafka records on two consumed topics
        raw = AIOKafkaProducer(**client_kwargs(s))
        await raw.start()
        try:
            for i in range(kafka_records):
                name = topic(s, "market.events" if i % 2 else "agent.actions")
                await raw.send(name, f"chaos-bad-{i}\x00\xff".encode("latin-1"), key=b"BTC/USDT")
            await raw.flush()
        finally:
            await raw.stop()
        fig.kafka_records_injected = kafka_records

        async def kafka_done():
            _, n = _dead_letter_counts(await _read(s, "deadletter"), marker)
            return n >= kafka_records
        await _wait(kafka_done, 300, f"{kafka_records} Kafka dead letters", 2.0)

        # 4. chaos, from the learner's first group (before it, the children are still starting and
        # there is no work to interrupt) to the replay's last line
        replay_end = await _replay_due_end(cluster)

        async def learning() -> bool:  # the daemon's own fault hook says it opened an apply window
            moments.poll()
            return bool(moments.working)
        await _wait(learning, 600, "the learner's first group", 0.5)
        window = (time.monotonic(), replay_end)
        # under about 5 s a kill the schedule would be a burst again, most victims still restarting
        assert window[1] - window[0] >= 5 * kills, f"{window[1] - window[0]:.0f} s of replay left for {kills} kills"

        async def after_kill(k: int) -> None:
            if k == kills // 2:
                await asyncio.to_thread(kafka_local.stop, broker_dir)
                restarted = await asyncio.to_thread(kafka_local.start, broker_dir)
                assert restarted.bootstrap == info.bootstrap, "the broker came back on another port"
                fig.broker_restarts += 1
        killer = Killer(sup, moments, rng)
        for k in await killer.run(kills, t_start, *window, after_kill):
            fig.kills[k.target] += 1

        # 5. quiesce: replay over, every group closed, the learner caught up
        await cluster.wait_finished(timeout=900)

        async def all_groups_closed():
            actions = [a for a in await _read(s, "agent.actions") if isinstance(a, Action)]
            groups = {g.group_id for g in await _read(s, "learn.groups") if isinstance(g, GRPOGroup)}
            return {a.group_id for a in actions} <= groups
        await _wait(all_groups_closed, 300, "every group to close", 2.0)

        async def caught_up():
            st = await status()
            return st is not None and st.get("learn_lag") == 0
        await _wait(caught_up, 300, "the learner to catch up")
        fig.alive_at_end = dict(sup.alive(), broker=broker_address.broker_answers(info.bootstrap))
        fig.restarts = {c.name: c.restarts for c in sup.children}
    finally:
        await sup.stop()
        await cluster.stop()

    # 6. the figures, from the log
    actions = [a for a in await _read(s, "agent.actions") if isinstance(a, Action)]
    ids = [a.event_id for a in actions]
    fig.actions, fig.duplicate_actions = len(ids), len(ids) - len(set(ids))
    groups = [g for g in await _read(s, "learn.groups") if isinstance(g, GRPOGroup)]
    fig.groups = len({g.group_id for g in groups})
    fig.lost_groups = len({a.group_id for a in actions} - {g.group_id for g in groups})
    fig.ws_dead_letters, fig.kafka_dead_letters = _dead_letter_counts(
        [d for d in await _read(s, "deadletter") if isinstance(d, DeadLetter)], "chaos-ws-frame")
    final = [m for m in await _read(s, "learn.snapshots") if isinstance(m, SnapshotMarker)][-1]
    state, _ = await asyncio.to_thread(clean_replay, initial_snapshot, groups, final.offsets["learn.groups:0"])
    fig.policy_version = final.policy_version
    fig.checksum_matches = model_checksum(state) == final.checksum
    await asyncio.to_thread(kafka_local.stop, broker_dir)
    fig.wall_s = round(time.monotonic() - t_start, 1)
    fig.kill_report = report(killer.kills, fig.wall_s, (window[0] - t_start, window[1] - t_start), moments)
    return fig


async def _replay_due_end(cluster) -> float:
    """Monotonic time (the event loop's clock) at which the replay is due to play its last line."""
    def last_ns(cap) -> int:
        return deque(replace(cap, files=cap.files[-1:]).lines(), maxlen=1)[0][0]
    last = max(await asyncio.to_thread(lambda: [last_ns(c) for c in cluster.binance.captures]))
    await cluster.binance.pacer.started.wait()
    return cluster.binance.pacer.due(last)


async def _subscribed(cluster) -> bool:
    return await cluster.binance.wait_subscribed([("spot", "btcusdt@trade"), ("usdm", "btcusdt@trade")], 0.1)
