"""The guard's state machine on synthetic groups (no probe): K consecutive windows, the order and
bounds of the escalation, events and metrics, release, restart, and the per-block rollback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from daemon.service.guard import CollapseGuard, GuardConfig
from daemon.service.policy import ResidentPolicy
from daemon.service.snapshots import write_snapshot
from learners.core import LearnerConfig, block_checksum, build_state
from learners.model import ModelConfig
from learners.snapshot import load_snapshot, save_snapshot
from schemas import GRPOGroup
from tests.guard.harness import ACTIONS

T0 = 1_700_000_000_000_000_000


def small_state(**kw):
    cfg = dict(model=ModelConfig(n_blocks=3, n_layer=1, n_embd=32, n_head=2), gen_len=12, sample_steps=6, lr=1e-3,
               device="cpu", likelihood="elbo", reveal_window=2, kl_bootstrap_coef=0.0)
    cfg.update(kw)
    return build_state(LearnerConfig(**cfg))


_counter = iter(range(10**9))


def healthy(version: int = 0) -> GRPOGroup:
    i = next(_counter)
    comps = ACTIONS[:8]
    rewards = [k / 7 for k in range(8)]
    mean = sum(rewards) / 8
    return GRPOGroup(group_id=f"h{i}", symbol="X", policy_version=version, prompt="M X r1=+1>", completions=comps,
                     candidate_indices=list(range(8)), rewards=rewards, advantages=[r - mean for r in rewards],
                     group_size=8, ts_event=T0 + i)


def collapsed(version: int = 0) -> GRPOGroup:
    i = next(_counter)
    return GRPOGroup(group_id=f"c{i}", symbol="X", policy_version=version, prompt="M X r1=+1>",
                     completions=["long 1 h30"] * 8, candidate_indices=list(range(8)), rewards=[1.0] * 8,
                     advantages=[0.0] * 8, group_size=8, status="skipped", skip_reason="zero_spread", ts_event=T0 + i)


def config(**kw) -> GuardConfig:
    base = dict(window_groups=2, consecutive_windows=2, temperature_step=0.25, temperature_max=1.5,
                regulariser_coef=0.5, release_windows=2, probe_every_windows=0)
    base.update(kw)
    return GuardConfig(**base)


def feed(guard: CollapseGuard, make, windows: int) -> list:
    out = []
    for _ in range(windows * guard.cfg.window_groups):
        out += guard.observe([make(guard.policy.policy_version)])
    return out


def count(action: str) -> float:
    return REGISTRY.get_sample_value("eigenloop_guard_actions_total", {"action": action}) or 0.0


def test_escalates_in_order_within_bounds_after_k_windows_then_releases(tmp_path: Path):
    policy = ResidentPolicy(small_state())
    write_snapshot(policy.state, tmp_path, {})
    guard = CollapseGuard(config(), policy, tmp_path)
    before = {a: count(a) for a in ("raise_temperature", "regularise", "pin_blocks", "release")}

    assert feed(guard, healthy, 2) == [] and guard.healthy_version == 0
    # K - 1 bad windows, then a good one: the count starts again
    assert feed(guard, collapsed, 1) == [] and feed(guard, healthy, 1) == []
    assert feed(guard, collapsed, 1) == []
    (a,) = feed(guard, collapsed, 1)
    assert a.action == "raise_temperature" and a.value == 1.25 and policy.temperature == 1.25
    assert "action entropy 0.00 bits < floor 1" in a.reason and "zero-spread share 1.00" in a.reason
    assert (a.type, a.source, a.policy_version, a.key) == ("learn.guard", "guard", 0, "0")
    # each step gets K windows of its own before the next
    assert feed(guard, collapsed, 1) == []
    (a,) = feed(guard, collapsed, 1)
    assert a.action == "raise_temperature" and policy.temperature == 1.5
    (a,) = feed(guard, collapsed, 2)
    assert a.action == "regularise" and policy.state.config.kl_bootstrap_coef == 0.5 and a.value == 0.5
    assert policy.temperature == 1.5  # never past temperature_max
    (a,) = feed(guard, collapsed, 2)
    assert a.action == "pin_blocks" and a.blocks == [0, 1, 2] and a.value == 0.0  # pinned to the v0 snapshot
    assert policy.policy_version == 1 and a.policy_version == 1  # pinning is a new policy
    assert guard.level == 3 and REGISTRY.get_sample_value("eigenloop_guard_level") == 3
    assert REGISTRY.get_sample_value("eigenloop_guard_unhealthy_windows") == 8

    assert feed(guard, healthy, 1) == []
    (a,) = feed(guard, healthy, 1)
    assert a.action == "release" and policy.temperature is None and policy.state.config.kl_bootstrap_coef == 0.0
    assert guard.level == 0 and a.value == 1.0
    assert {k: count(k) - v for k, v in before.items()} == {"raise_temperature": 2, "regularise": 1,
                                                             "pin_blocks": 1, "release": 1}


def test_a_window_of_garbage_is_unhealthy_whatever_its_entropy():
    policy = ResidentPolicy(small_state())
    guard = CollapseGuard(config(enabled=False), policy)

    def garbage(version: int) -> GRPOGroup:
        g = healthy(version)
        return g.model_copy(update={"completions": ["long 1 h5", "short 1 h5"] + ["#"] * 6})

    feed(guard, garbage, 1)
    (w,) = guard.windows
    assert w.metrics.action_entropy == 1.0 and w.metrics.zero_spread_share == 0.0
    assert w.reasons == ["valid share 0.25 < floor 0.5"]


def test_disabled_guard_measures_but_never_acts():
    policy = ResidentPolicy(small_state())
    guard = CollapseGuard(config(enabled=False), policy)
    assert feed(guard, collapsed, 6) == []
    assert policy.temperature is None and policy.state.config.kl_bootstrap_coef == 0
    assert len(guard.windows) == 6 and all(not w.healthy for w in guard.windows)
    assert REGISTRY.get_sample_value("eigenloop_diversity_action_entropy_bits") == 0.0
    assert REGISTRY.get_sample_value("eigenloop_diversity_zero_spread_share") == 1.0


def test_without_a_reference_the_regulariser_is_entropy_and_without_snapshots_nothing_is_pinned():
    policy = ResidentPolicy(small_state(keep_reference=False))
    guard = CollapseGuard(config(temperature_max=1.0), policy)  # nothing to raise
    (a,) = feed(guard, collapsed, 2)
    assert a.action == "regularise" and policy.state.config.entropy_coef == 0.5
    assert feed(guard, collapsed, 4) == []  # no snapshot root: the guard cannot roll back


def test_guard_state_survives_a_restart_through_the_snapshot(tmp_path: Path):
    policy = ResidentPolicy(small_state())
    guard = CollapseGuard(config(temperature_max=1.0), policy)
    feed(guard, healthy, 1)
    (a,) = feed(guard, collapsed, 2)
    assert a.action == "regularise"
    save_snapshot(policy.state, tmp_path / "s")

    restored = ResidentPolicy(load_snapshot(tmp_path / "s"))
    assert restored.state.config.kl_bootstrap_coef == 0.5  # the regulariser is in the saved config
    again = CollapseGuard(config(temperature_max=1.0), restored)
    assert again.level == 2 and again.healthy_version == 0
    (a,) = feed(again, healthy, 2)
    assert a.action == "release" and restored.state.config.kl_bootstrap_coef == 0.0


def test_pinning_restores_only_the_offending_blocks(tmp_path: Path):
    """Per-block rollback: blocks 0 and 2 moved, block 0 twice as far; only block 0 goes back."""
    policy = ResidentPolicy(small_state(block_selection="round_robin", blocks_per_group=1))
    guard = CollapseGuard(config(temperature_max=1.0, pin_share=0.75), policy, tmp_path)
    feed(guard, healthy, 1)  # the data of policy_version 0 was healthy
    snap = write_snapshot(policy.state, tmp_path, {})
    at_snapshot = [block_checksum(policy.state.model, b) for b in range(3)]
    for g in (healthy(0), healthy(1), healthy(2), healthy(3)):  # round robin: blocks 0, 1, 2, 0
        updates, _ = policy.apply_sync(g)
        guard.observe([], updates)
    moved = [block_checksum(policy.state.model, b) for b in range(3)]
    assert all(m != s for m, s in zip(moved, at_snapshot))
    assert guard.offending_blocks(0) == [0]

    (a,) = feed(guard, collapsed, 2)
    assert a.action == "regularise"
    (a,) = feed(guard, collapsed, 2)
    assert a.action == "pin_blocks" and a.blocks == [0] and snap.name in a.reason
    now = [block_checksum(policy.state.model, b) for b in range(3)]
    assert now == [at_snapshot[0], moved[1], moved[2]]
    assert policy.state.block_steps == [0, 1, 1]  # the pinned block's optimiser counters went back too
    assert guard.offending_blocks(0) == [1, 2]  # block 0's drift was forgotten with its rollback


def test_pinning_skips_a_damaged_snapshot_for_the_previous_healthy_one(tmp_path: Path):
    """The newest healthy snapshot's tensors are torn: the guard reports it, leaves the model as
    it was for that attempt, and pins from the next older healthy snapshot instead of crashing."""
    policy = ResidentPolicy(small_state(block_selection="round_robin", blocks_per_group=1))
    guard = CollapseGuard(config(temperature_max=1.0, pin_share=0.75), policy, tmp_path)
    feed(guard, healthy, 1)
    older = write_snapshot(policy.state, tmp_path, {})
    at_snapshot = [block_checksum(policy.state.model, b) for b in range(3)]
    # a second snapshot of the same version (as a /snapshot call without updates in between writes)
    newer = tmp_path / older.name.replace("0000000000", "0000000001")
    shutil.copytree(older, newer)
    weights = newer / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for g in (healthy(0), healthy(1), healthy(2), healthy(3)):
        updates, _ = policy.apply_sync(g)
        guard.observe([], updates)
    moved = [block_checksum(policy.state.model, b) for b in range(3)]
    failures = REGISTRY.get_sample_value("eigenloop_snapshot_load_failures_total") or 0.0

    assert [p for p, _ in guard.healthy_snapshots()] == [newer, older]
    feed(guard, collapsed, 2)
    (a,) = feed(guard, collapsed, 2)
    assert a.action == "pin_blocks" and a.blocks == [0] and older.name in a.reason
    assert [block_checksum(policy.state.model, b) for b in range(3)] == [at_snapshot[0], moved[1], moved[2]]
    assert REGISTRY.get_sample_value("eigenloop_snapshot_load_failures_total") == failures + 1


@pytest.mark.parametrize("kw", [dict(window_groups=0), dict(zero_spread_ceiling=1.5), dict(surprise=1)])
def test_config_is_validated(kw):
    with pytest.raises(ValueError):
        GuardConfig(**kw)


def _all(completion: str, reward: float, version: int = 0) -> GRPOGroup:
    i = next(_counter)
    return GRPOGroup(group_id=f"a{i}", symbol="X", policy_version=version, prompt="M X r1=+1>",
                     completions=[completion] * 8, candidate_indices=list(range(8)), rewards=[reward] * 8,
                     advantages=[0.0] * 8, group_size=8, status="skipped", skip_reason="zero_spread", ts_event=T0 + i)


def test_a_policy_standing_aside_is_not_a_collapse():
    # all flat at reward 0 (fees above the edge: not trading is right) -> healthy, no action
    policy = ResidentPolicy(small_state())
    guard = CollapseGuard(config(), policy)
    assert feed(guard, lambda v: _all("flat 0 h5", 0.0, v), windows=4) == []
    assert all(w.healthy and w.standing_aside for w in guard.windows) and policy.temperature is None
    # the same single-action window on a side that trades is judged a collapse and acted on
    guard = CollapseGuard(config(), ResidentPolicy(small_state()))
    acts = feed(guard, lambda v: _all("short 1 h5", 0.0, v), windows=2)
    assert [a.action for a in acts] == ["raise_temperature"] and not guard.windows[-1].standing_aside
    # flat but losing (invalid penalties aside, a 90 % flat window whose trades lose) is no excuse
    guard = CollapseGuard(config(stand_aside_share=0.5), ResidentPolicy(small_state()))

    def mostly_flat_losing(v):
        i = next(_counter)
        comps = ["flat 0 h5"] * 7 + ["long 1 h5"]
        return GRPOGroup(group_id=f"m{i}", symbol="X", policy_version=v, prompt="M X r1=+1>", completions=comps,
                         candidate_indices=list(range(8)), rewards=[0.0] * 7 + [-1.0],
                         advantages=[0.125] * 7 + [-0.875], group_size=8, ts_event=T0 + i)
    feed(guard, mostly_flat_losing, windows=2)
    assert guard.windows and not any(w.standing_aside for w in guard.windows)
    # switched off: all flat is judged like any other window
    guard = CollapseGuard(config(stand_aside_share=None), ResidentPolicy(small_state()))
    assert [a.action for a in feed(guard, lambda v: _all("flat 0 h5", 0.0, v), windows=2)] == ["raise_temperature"]
