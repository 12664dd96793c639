"""Pinning blocks is all or nothing, and takes snapshots only from under the snapshot root."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import aiohttp
import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.service import snapshots
from daemon.service.executors import KillSwitch
from daemon.service.http import HttpServer
from daemon.service.policy import ResidentPolicy
from daemon.service.runtime import Daemon
from learners.core import LearnerConfig, block_checksum, build_state, step
from learners.model import ModelConfig
from learners.snapshot import pin_blocks, save_snapshot, snapshot_under
from schemas import GRPOGroup
from schemas.settings import Settings

TOKEN = "pin-test-admin-token-0123456789"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int = 0, n_embd: int = 32):
    cfg = LearnerConfig(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=n_embd, n_head=2), gen_len=12,
                        sample_steps=12, lr=3e-4, seed=seed, device="cpu")
    return build_state(cfg)


def learned(seed: int = 0):
    """A tiny state whose optimisers hold moments (one applied group)."""
    group = GRPOGroup(group_id=f"g{seed}", symbol="BTCUSDT", policy_version=0, prompt="M BTCUSDT r1=+1>",
                      completions=["long 0.5 h5", "short 1 h10", "flat 0 h5"], candidate_indices=[0, 1, 2],
                      rewards=[1.0, -0.5, -0.5], advantages=[1.0, -0.5, -0.5], group_size=3,
                      ts_event=1_700_000_000_000_000_000)
    state, _ = step(tiny(seed), group)
    return state


def fingerprint(state) -> tuple:
    opt = [{k: [float(t.sum()) for t in v.values() if torch.is_tensor(t)] for k, v in o.state_dict()["state"].items()}
           for o in state.optimizers]
    return ([block_checksum(state.model, b) for b in range(2)], opt, list(state.block_steps), list(state.loss_ema),
            state.policy_version)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "data" / "snapshots"
    r.mkdir(parents=True)
    return r


def test_a_good_pin_loads_the_blocks(root):
    save_snapshot(learned(seed=1), root / "foreign")
    state = learned(seed=0)
    before = fingerprint(state)
    pin_blocks(state, "foreign", [1], root=root)  # relative: taken from the root
    after = fingerprint(state)
    assert after[0][0] == before[0][0] and after[0][1] != before[0][1]
    assert after[4] == before[4] + 1


def test_a_snapshot_without_its_optimizer_state_changes_nothing(root):
    save_snapshot(learned(seed=1), root / "broken")
    os.remove(root / "broken" / "optimizer.safetensors")
    state = learned(seed=0)
    before = fingerprint(state)
    with pytest.raises((ValueError, OSError)):
        pin_blocks(state, root / "broken", [0, 1], root=root)
    assert fingerprint(state) == before  # no foreign weights in block 0


def test_a_snapshot_missing_one_block_changes_nothing(root):
    save_snapshot(learned(seed=1), root / "partial")
    weights = load_file(str(root / "partial" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("blocks.1.")},
              str(root / "partial" / "model.safetensors"))
    state = learned(seed=0)
    before = fingerprint(state)
    with pytest.raises(ValueError, match="cannot be pinned"):
        pin_blocks(state, root / "partial", [0, 1], root=root)
    assert fingerprint(state) == before


def test_a_snapshot_of_another_shape_changes_nothing(root):
    save_snapshot(tiny(seed=1, n_embd=48), root / "wider")
    state = learned(seed=0)
    before = fingerprint(state)
    with pytest.raises(ValueError):
        pin_blocks(state, root / "wider", [0, 1], root=root)
    assert fingerprint(state) == before


def test_only_snapshots_under_the_root(root, tmp_path):
    outside = tmp_path / "outside"
    save_snapshot(tiny(seed=1), outside / "snap")
    save_snapshot(tiny(seed=1), root / "inside")
    (root / "escape").symlink_to(outside / "snap", target_is_directory=True)
    sneaky = root / "sneaky"
    sneaky.mkdir()
    for name in ("state.json", "optimizer.safetensors"):
        shutil.copy(root / "inside" / name, sneaky / name)
    (sneaky / "model.safetensors").symlink_to(outside / "snap" / "model.safetensors")
    for bad, why in [(outside / "snap", "not a snapshot under"), (root / ".." / ".." / "outside" / "snap", "'..'"),
                     ("../../outside/snap", "'..'"), (root / "escape", "not a snapshot under"),
                     (sneaky, "links out"), (root, "not a snapshot under"), (root / "missing", "not a snapshot")]:
        state = tiny(seed=0)
        before = fingerprint(state)
        with pytest.raises(ValueError, match=why):
            pin_blocks(state, bad, [0], root=root)
        assert fingerprint(state) == before, bad
    assert snapshot_under(root, root / "inside") == (root / "inside").resolve()


class Recorder:
    """The learner loop and the producer at their boundary with Daemon.pin: what it records, in order."""

    def __init__(self, policy: ResidentPolicy, root):
        self.lock = asyncio.Lock()
        self.policy, self.root, self.calls = policy, root, []

    def refresh_checksums(self) -> None:
        self.calls.append("checksums")

    async def send_and_wait(self, topic: str, event) -> None:
        self.calls.append((topic, event.action, event.blocks, event.policy_version))

    async def snapshot_locked(self):
        self.calls.append("snapshot")
        return snapshots.write_snapshot(self.policy.state, self.root, {}, suffix="-after-pin")


def daemon_with(state, tmp_path) -> tuple[Daemon, Recorder]:
    d = Daemon.__new__(Daemon)  # only what pin() touches; no broker, no sources
    d.s = Settings(data_dir=tmp_path / "data")
    d.policy = ResidentPolicy(state)
    rec = Recorder(d.policy, snapshots.snapshot_root(d.s.data_dir))
    d.learner = d.producer = rec
    return d, rec


def test_daemon_pin_records_then_snapshots(root, tmp_path):
    save_snapshot(learned(seed=1), root / "0000000001-v1")
    d, rec = daemon_with(learned(seed=0), tmp_path)
    out = asyncio.run(d.pin(str(root / "0000000001-v1"), [0], "operator"))
    assert rec.calls == ["checksums", ("learn.guard", "pin_blocks", [0], 2), "snapshot"]
    assert out["policy_version"] == 2 and out["snapshot"].endswith("-after-pin")


def test_http_pin_outside_the_root_is_refused_and_changes_nothing(root, tmp_path):
    save_snapshot(learned(seed=1), tmp_path / "elsewhere" / "snap")
    d, rec = daemon_with(learned(seed=0), tmp_path)
    before = fingerprint(d.policy.state)

    async def go():
        server = HttpServer("127.0.0.1", 0, health=lambda: {"ok": True}, ready=None,
                            kill_switch=KillSwitch(tmp_path / "KILL"), snapshot=None, admin_token=TOKEN, pin=d.pin)
        port = await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                body = {"snapshot": str(tmp_path / "elsewhere" / "snap"), "blocks": [0, 1], "reason": "x"}
                async with http.post(f"http://127.0.0.1:{port}/pin", data=json.dumps(body),
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"}) as resp:
                    return resp.status, await resp.json()
        finally:
            await server.stop()

    status, body = asyncio.run(go())
    assert status == 400 and "snapshot root" in body["error"]
    assert fingerprint(d.policy.state) == before and rec.calls == []


def test_offline_pin_skips_a_torn_newest_snapshot(root, tmp_path, monkeypatch):
    """No daemon answers: the CLI pins into the newest snapshot that loads (as the daemon's
    start would pick it), not into a torn one, and says nothing went wrong with the pin itself."""
    import socket

    from typer.testing import CliRunner

    from daemon.cli import app

    source = snapshots.write_snapshot(tiny(0), root, {"learn.groups:0": 0})
    good = snapshots.write_snapshot(learned(0), root, {"learn.groups:0": 5})
    torn = root / good.name.replace("0000000001", "0000000002")
    shutil.copytree(good, torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with socket.socket() as sock:  # a port nobody listens on: the CLI works offline
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("EIGENLOOP_DATA_DIR", str(root.parent))
    monkeypatch.setenv("EIGENLOOP_HTTP__PORT", str(port))
    out = CliRunner().invoke(app, ["learner", "pin-blocks", "--snapshot", str(source), "--blocks", "0"])
    assert out.exit_code == 0, out.output
    (written,) = root.glob("*-pinned")
    assert written.name in out.output
    # the daemon's start skips the torn one again and resumes from the pinned one
    assert snapshots.load_newest(root, device="cpu")[1] == written
    assert snapshots.snapshot_offsets(written) == {"learn.groups:0": 5}  # the good one's, not the torn one's
    pinned = snapshots.load(written, device="cpu")
    assert block_checksum(pinned.model, 0) == block_checksum(tiny(0).model, 0)
    assert block_checksum(pinned.model, 1) == block_checksum(learned(0).model, 1)
