"""A damaged newest snapshot does not stop the daemon: after a kill -9, its model.safetensors is
truncated and an interrupted write is left behind; the restarted daemon removes the leftover,
skips the damaged snapshot for the previous one, catches up from that one's offsets, and ends
where a clean replay of the log ends (each group applied exactly once)."""

from __future__ import annotations

import json

import pytest

from daemon.service import snapshots
from daemon.service.learner_loop import model_checksum
from schemas import GRPOGroup, SnapshotMarker

from harness import Proc, ReplayThread, clean_replay, http_port, install_snapshot, loop_settings, read_all, \
    wait_status, write_config


def logged(proc: Proc, event: str) -> dict:
    line = proc.wait_for(event, 60)
    return json.loads(line[line.index("{"):])


@pytest.mark.kafka
@pytest.mark.timeout(1500)
def test_a_truncated_newest_snapshot_falls_back_and_catches_up(kafka_settings, tmp_path, shared_data,
                                                              tiny_initial_snapshot):
    with ReplayThread(shared_data, speed=4.0, symbols=["BTC/USDT"], markets=("spot", "usdm"), social=False) as cluster:
        s = loop_settings(kafka_settings, tmp_path, cluster)
        cfg = write_config(s, tmp_path / "config.yaml")
        worker = Proc("streams", ["streams", "worker"], cfg).start()
        worker.wait_for("streams worker ready", 120)
        install_snapshot(tiny_initial_snapshot, s.data_dir)
        daemon = Proc("daemon", ["daemon"], cfg).start()
        try:
            port = http_port(daemon)
            # past two periodic snapshots, so the damaged one has a periodic one before it
            before = wait_status(port, lambda st: st["policy_version"] >= 9, 600, daemon)
            daemon.kill9()
            root = snapshots.snapshot_root(s.data_dir)
            *_, previous, newest = snapshots.list_snapshots(root)
            model = newest / "model.safetensors"
            with open(model, "r+b") as fh:
                fh.truncate(model.stat().st_size // 2)
            leftover = root / f".{9_999_999_999:010d}-v9999{snapshots.TEMP_MARK}999999999"  # no such pid
            leftover.mkdir()
            (leftover / "model.safetensors.tmp").write_bytes(b"\0" * 16)

            daemon = Proc("daemon", ["daemon"], cfg).start()
            port = http_port(daemon)
            daemon.wait_for("removed an interrupted snapshot write", 60)
            # the kill may have cut a write of its own short: that leftover is removed too
            assert any(json.dumps(str(leftover)) in line for line in daemon.lines
                       if "removed an interrupted snapshot write" in line)
            failure = logged(daemon, "snapshot does not load")
            assert failure["file"] == str(model) and failure["reason"]
            loaded = logged(daemon, '"model loaded"')
            assert loaded["snapshot"] == str(previous)
            assert loaded["offset"] == snapshots.snapshot_offsets(previous).get("learn.groups:0", 0)
            assert not leftover.exists()
            after = wait_status(port, lambda st: st["learn_lag"] == 0 and st["policy_version"] >= before["policy_version"],
                                420, daemon)
            assert after["learn_offset"] >= before["learn_offset"]
            assert daemon.stop() == 0, "".join(daemon.lines[-40:])
        finally:
            daemon.stop()
            worker.stop()
    groups = [g for g in read_all(s, "learn.groups") if isinstance(g, GRPOGroup)]
    final = [m for m in read_all(s, "learn.snapshots") if isinstance(m, SnapshotMarker)][-1]
    state, _ = clean_replay(tiny_initial_snapshot, groups, final.offsets["learn.groups:0"])
    assert model_checksum(state) == final.checksum
    assert state.policy_version == final.policy_version
