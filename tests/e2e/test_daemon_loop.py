"""The loop closes: recorded websockets → ccxt.pro → Kafka → Faust → block-local updates → new
policy → next action, with the real broker, a real Faust worker and the real daemon process."""

from __future__ import annotations

import json
import urllib.request

import pytest

from daemon.service.learner_loop import model_checksum
from schemas import Action, BlockUpdate, DeadLetter, GRPOGroup, MarketTrade, SnapshotMarker

from harness import Proc, ReplayThread, clean_replay, http_port, install_snapshot, loop_settings, read_all, \
    wait_status, write_config


def _start_pipeline(s, tmp_path, initial):
    cfg = write_config(s, tmp_path / "config.yaml")
    worker = Proc("streams", ["streams", "worker"], cfg).start()
    worker.wait_for("streams worker ready", 120)
    install_snapshot(initial, s.data_dir)
    daemon = Proc("daemon", ["daemon"], cfg).start()
    return cfg, worker, daemon


@pytest.mark.kafka
@pytest.mark.timeout(1500)
def test_replay_through_the_whole_loop(kafka_settings, tmp_path, shared_data, tiny_initial_snapshot):
    with ReplayThread(shared_data, speed=4.0, symbols=["BTC/USDT"], markets=("spot", "usdm"), social=True) as cluster:
        s = loop_settings(kafka_settings, tmp_path, cluster)
        _, worker, daemon = _start_pipeline(s, tmp_path, tiny_initial_snapshot)
        try:
            port = http_port(daemon)
            wait_status(port, lambda st: st["groups"] >= 20 and st["policy_version"] > 0
                        and st["market_span_s"] >= 125, 600, daemon)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                health = json.loads(r.read())
            # liveness from the running parts themselves, not literals
            assert health["ok"] and health["tasks"] == {"learner": True, "actor": True}, health
            assert health["model_loaded"] and health["failing"] == [], health
            assert daemon.stop() == 0, "".join(daemon.lines[-40:])
        finally:
            daemon.stop()
            worker.stop()
    trades = [e for e in read_all(s, "market.events") if isinstance(e, MarketTrade)]
    span_s = (max(t.ts_event for t in trades) - min(t.ts_event for t in trades)) / 1e9
    assert span_s >= 120, f"only {span_s:.0f} s of recorded market time went through"
    groups = [g for g in read_all(s, "learn.groups") if isinstance(g, GRPOGroup)]
    assert len({g.group_id for g in groups}) >= 20
    updates = {u.event_id: u for u in read_all(s, "learn.updates") if isinstance(u, BlockUpdate)}
    assert max(u.policy_version for u in updates.values()) > 0
    # the recorded checksums are what the pure learner computes from the same groups
    markers = [m for m in read_all(s, "learn.snapshots") if isinstance(m, SnapshotMarker)]
    final_offset = markers[-1].offsets["learn.groups:0"]
    state, replayed = clean_replay(tiny_initial_snapshot, groups, final_offset)
    recorded = sorted(updates.values(), key=lambda u: (u.step, u.block, u.policy_version))
    assert [(u.group_id, u.block, u.checksum) for u in replayed] == \
        [(u.group_id, u.block, u.checksum) for u in sorted(recorded, key=lambda u: (u.policy_version, u.block))]
    assert model_checksum(state) == markers[-1].checksum
    actions = [a for a in read_all(s, "agent.actions") if isinstance(a, Action)]
    assert {a.group_id for a in actions} >= {g.group_id for g in groups}
    # the daemon samples from the action grammar: every candidate parses, from the first decision
    bad = [(a.completion, a.invalid_reason) for a in actions if a.parsed is None]
    assert not bad, f"{len(bad)} of {len(actions)} actions did not parse: {bad[:5]}"
    letters = [d for d in read_all(s, "deadletter") if isinstance(d, DeadLetter)]
    assert letters == [], f"valid data produced dead letters: {[d.reason for d in letters[:5]]}"


@pytest.mark.kafka
@pytest.mark.timeout(1500)
def test_daemon_kill9_restart_exactly_once(kafka_settings, tmp_path, shared_data, tiny_initial_snapshot):
    with ReplayThread(shared_data, speed=4.0, symbols=["BTC/USDT"], markets=("spot", "usdm"), social=False) as cluster:
        s = loop_settings(kafka_settings, tmp_path, cluster)
        cfg, worker, daemon = _start_pipeline(s, tmp_path, tiny_initial_snapshot)
        try:
            port = http_port(daemon)
            # past the periodic snapshot at 4 updates, so the restart resumes mid-log and must
            # apply the groups after that snapshot again, exactly once
            before = wait_status(port, lambda st: st["policy_version"] >= 6, 420, daemon)
            daemon.kill9()
            daemon = Proc("daemon", ["daemon"], cfg).start()
            port = http_port(daemon)
            after = wait_status(port, lambda st: st["learn_lag"] == 0 and st["policy_version"] >= before["policy_version"],
                                420, daemon)
            assert after["learn_offset"] >= before["learn_offset"]
            assert daemon.stop() == 0
        finally:
            daemon.stop()
            worker.stop()
    actions = [a for a in read_all(s, "agent.actions") if isinstance(a, Action)]
    ids = [a.event_id for a in actions]
    assert len(ids) == len(set(ids)), "an action was emitted twice"
    groups = [g for g in read_all(s, "learn.groups") if isinstance(g, GRPOGroup)]
    final = [m for m in read_all(s, "learn.snapshots") if isinstance(m, SnapshotMarker)][-1]
    state, _ = clean_replay(tiny_initial_snapshot, groups, final.offsets["learn.groups:0"])
    assert model_checksum(state) == final.checksum
    assert state.policy_version == final.policy_version
