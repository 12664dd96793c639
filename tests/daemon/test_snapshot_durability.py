"""Snapshots survive crashes and damage: every write is fsynced (files, the temporary directory,
and the parent after the publishing rename), interrupted writes are removed on start, and a
snapshot that does not load is skipped for the previous one, whose offsets the daemon resumes
from. No Kafka: the daemon's load function on a data folder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from safetensors.torch import load_file, save_file

from daemon.service import snapshots
from daemon.service.learner_loop import combined_checksum, model_checksum
from daemon.service.runtime import load_or_bootstrap
from learners.core import LearnerConfig, block_checksum, build_state, step
from learners.snapshot import SnapshotUnreadable
from schemas import GRPOGroup
from schemas.settings import Settings

TINY = {"model": {"n_blocks": 2, "n_layer": 1, "n_embd": 32, "n_head": 2}, "gen_len": 12, "sample_steps": 12,
        "lr": 3e-4, "seed": 0, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def group(i: int) -> GRPOGroup:
    return GRPOGroup(group_id=f"g{i}", symbol="BTCUSDT", policy_version=i, prompt="M BTCUSDT r1=+1>",
                     completions=["long 0.5 h5", "short 1 h10", "flat 0 h5"], candidate_indices=[0, 1, 2],
                     rewards=[1.0, -0.5, -0.5], advantages=[1.0, -0.5, -0.5], group_size=3,
                     ts_event=1_700_000_000_000_000_000 + i)


class Log:
    """Stands in for the module's logger: what it was told, by level."""

    def __init__(self):
        self.records: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **fields: self.records.append((level, event, fields))

    def at(self, level: str) -> list[dict]:
        return [f for lv, _, f in self.records if lv == level]


@pytest.fixture
def log(monkeypatch) -> Log:
    rec = Log()
    monkeypatch.setattr(snapshots, "log", rec)
    return rec


@pytest.fixture
def data(tmp_path) -> dict:
    """Two snapshots a group apart, each recording its model checksum and its offsets."""
    root = snapshots.snapshot_root(tmp_path)
    state = build_state(LearnerConfig(**TINY))
    written = []
    for i in range(2):
        state, _ = step(state, group(i))
        written.append(snapshots.write_snapshot(state, root, {"learn.groups:0": 10 * (i + 1)},
                                                extra={"checksum": model_checksum(state)}))
    return {"settings": Settings(data_dir=tmp_path), "root": root, "older": written[0], "newest": written[1]}


def failures() -> float:
    return REGISTRY.get_sample_value("eigenloop_snapshot_load_failures_total") or 0.0


def truncate_model(snap: Path) -> str:
    f = snap / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    return "model.safetensors"


def garble_optimizer(snap: Path) -> str:
    (snap / "optimizer.safetensors").write_bytes(b"\x00" * 64)
    return "optimizer.safetensors"


def optimizer_without_rng(snap: Path) -> str:
    f = snap / "optimizer.safetensors"
    save_file({k: v for k, v in load_file(str(f)).items() if not k.startswith("rng.")}, str(f))
    return "optimizer.safetensors"


def corrupt_state_json(snap: Path) -> str:
    (snap / "state.json").write_text('{"format_version": 1, "step": ')
    return "state.json"


def state_json_without_counters(snap: Path) -> str:
    doc = json.loads((snap / "state.json").read_text())
    del doc["block_steps"]
    (snap / "state.json").write_text(json.dumps(doc))
    return "state.json"


@pytest.mark.parametrize("damage", [truncate_model, garble_optimizer, optimizer_without_rng, corrupt_state_json,
                                    state_json_without_counters])
def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(data, log, damage):
    bad_file = damage(data["newest"])
    before = failures()
    state, path = load_or_bootstrap(data["settings"])
    assert path == data["older"]
    info = snapshots.read_snapshot_info(path)
    assert model_checksum(state) == info["metadata"]["checksum"]
    assert state.step == info["step"] and state.policy_version == info["policy_version"]
    assert snapshots.snapshot_offsets(path) == {"learn.groups:0": 10}  # where the daemon resumes
    (report,) = log.at("error")
    assert report["file"] == str(data["newest"] / bad_file) and report["reason"]
    assert failures() == before + 1
    assert data["newest"].is_dir()  # left as evidence


def test_an_intact_newest_snapshot_loads_with_no_report(data, log):
    state, path = load_or_bootstrap(data["settings"])
    assert path == data["newest"]
    assert model_checksum(state) == snapshots.read_snapshot_info(path)["metadata"]["checksum"]
    assert not log.at("error")


def test_a_missing_file_is_named_too(data, log):
    os.remove(data["newest"] / "optimizer.safetensors")
    _, path = snapshots.load_newest(data["root"])
    assert path == data["older"]
    assert log.at("error")[0]["file"] == str(data["newest"] / "optimizer.safetensors")


def test_when_no_snapshot_loads_the_start_fails_naming_each(data, log):
    truncate_model(data["newest"])
    corrupt_state_json(data["older"])
    with pytest.raises(SnapshotUnreadable) as e:
        snapshots.load_newest(data["root"])
    assert str(data["newest"] / "model.safetensors") in str(e.value)
    assert str(data["older"] / "state.json") in str(e.value)
    assert len(log.at("error")) == 2


def test_an_empty_root_has_nothing_to_load(tmp_path, log):
    assert snapshots.load_newest(tmp_path / "snapshots") is None


def temp_copy(src: Path, root: Path, pid: int, step: int = 99) -> Path:
    """A temporary directory as write_snapshot names it, complete and newer than everything,
    so that choosing it would show."""
    tmp = root / f".{step:010d}-v{step}{snapshots.TEMP_MARK}{pid}"
    tmp.mkdir()
    for f in src.iterdir():
        (tmp / f.name).write_bytes(f.read_bytes())
    return tmp


def test_interrupted_writes_are_removed_on_start_and_never_chosen(data, log):
    dead = subprocess.Popen(["true"])
    dead.wait()
    ours = temp_copy(data["newest"], data["root"], os.getpid())  # a previous life with the same pid
    gone = temp_copy(data["newest"], data["root"], dead.pid, step=98)
    half = data["root"] / f".0000000097-v97{snapshots.TEMP_MARK}{dead.pid}"
    half.mkdir()
    (half / "model.safetensors.tmp").write_bytes(b"\x00" * 10)  # no state.json: cut off mid-write
    writing = subprocess.Popen(["sleep", "30"])
    try:
        live = temp_copy(data["newest"], data["root"], writing.pid, step=96)
        _, path = load_or_bootstrap(data["settings"])
        assert path == data["newest"]
        assert not ours.exists() and not gone.exists() and not half.exists()
        assert live.is_dir()  # a running writer's directory is its own business
        assert {f["path"] for f in log.at("warning")} == {str(ours), str(gone), str(half)}
    finally:
        writing.kill()
        writing.wait()


def test_a_snapshot_write_fsyncs_files_directory_and_parent(tmp_path, monkeypatch):
    root = snapshots.snapshot_root(tmp_path.resolve())  # compared with the kernel's names for the fds
    root.mkdir()
    state, _ = step(build_state(LearnerConfig(**TINY)), group(0))
    events: list[tuple[str, str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        real_fsync(fd)

    def replace(src, dst, *a, **kw):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = snapshots.write_snapshot(state, root, {"learn.groups:0": 1})
    tmp = root / f".{final.name}{snapshots.TEMP_MARK}{os.getpid()}"

    def at(kind: str, a: Path, b: Path | None = None) -> int:
        hits = [i for i, e in enumerate(events) if e[:2] == (kind, str(a)) and (b is None or e[2] == str(b))]
        assert hits, f"no {kind} of {a} in {events}"
        return hits[-1]

    names = sorted(p.name for p in final.iterdir())
    assert names == ["model.safetensors", "optimizer.safetensors", "ref.safetensors", "state.json"]
    for name in names:  # each file's bytes are on disk before its name is
        assert at("fsync", tmp / f"{name}.tmp") < at("replace", tmp / f"{name}.tmp", tmp / name)
    state_json = at("replace", tmp / "state.json.tmp", tmp / "state.json")
    for name in names[:-1]:  # state.json, last, promises them
        assert at("replace", tmp / f"{name}.tmp", tmp / name) < state_json
    assert ("fsync", str(tmp), "") in events[:state_json]  # the tensor files' names, before state.json
    assert state_json < at("fsync", tmp)  # and the temporary directory once complete
    publish = at("replace", tmp, final)
    assert at("fsync", tmp) < publish
    assert events[-1] == ("fsync", str(root), "") and publish < len(events) - 1  # the rename itself


def test_the_loops_tracked_checksum_is_the_models():
    state = build_state(LearnerConfig(**TINY))
    # the loop fills its per-block map as blocks update, in any order
    tracked = {b: block_checksum(state.model, b) for b in reversed(range(len(state.model.blocks)))}
    assert combined_checksum(tracked) == model_checksum(state)
