"""Replay rebuilds the batches the live learner coalesced from the recorded updates' group ids,
applies groups in the order the live learner did (a paced learner applies them as decisions come
due, not in ``learn.groups`` order), and logs written before updates listed them (BlockUpdate v1,
joined ids) still verify. No Kafka: ``replay`` on groups and updates in memory."""

from __future__ import annotations

import json

import pytest
import torch

from daemon.eventlog import Position
from daemon.service.learning import as_applied, coalesce, in_applied_order, recorded_batches
from daemon.tools.replay.rebuild import replay
from learners.core import LearnerConfig, build_state, step
from learners.model import ModelConfig
from schemas import BlockUpdate, GRPOGroup, decode, encode


@pytest.fixture(autouse=True)
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def tiny():
    return build_state(LearnerConfig(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2), gen_len=12,
                                     sample_steps=12, lr=1e-3, device="cpu", seed=0))


def group(i: int, prompt: str = "M BTCUSDT r1=+1>") -> GRPOGroup:
    return GRPOGroup(group_id=f"g{i}", symbol="BTCUSDT", policy_version=0, prompt=prompt,
                     completions=["long 0.5 h5", "short 1 h10", "flat 0 h5"], candidate_indices=[0, 1, 2],
                     rewards=[1.0, -0.5, -0.5 + 0.1 * i], advantages=[1.0, -0.5, -0.5 + 0.1 * i], group_size=3,
                     ts_event=1_700_000_000_000_000_000 + i)


def live_log() -> tuple[list[GRPOGroup], list[BlockUpdate]]:
    """g0 alone, g1..g3 coalesced under backpressure, g4 alone: as the learner loop records them."""
    groups = [group(0), group(1), group(2), group(3), group(4, "M BTCUSDT r1=-1>")]
    state, recorded = tiny(), []
    for batch in ([groups[0]], groups[1:4], [groups[4]]):
        state, ups = step(state, coalesce(batch))
        if len(batch) > 1:
            ups = [u.model_copy(update={"coalesced": len(batch), "group_ids": [g.group_id for g in batch]})
                   for u in ups]
        recorded += ups
    return groups, recorded


def as_v1(u: BlockUpdate) -> BlockUpdate:
    """The update as a reader decodes it from a log written before ``group_ids`` existed."""
    d = json.loads(encode(u))
    del d["group_ids"]
    d["schema_version"] = 1
    return decode(json.dumps(d).encode())  # type: ignore[return-value]


def positions(groups: list[GRPOGroup]) -> list[tuple[Position, GRPOGroup]]:
    return [(Position("learn.groups", 0, i, i), g) for i, g in enumerate(groups)]


def test_batches_come_from_the_updates_group_ids():
    groups, recorded = live_log()
    batches = recorded_batches(recorded)
    assert batches == {"g1": ["g1", "g2", "g3"]}
    applied = [[g.group_id for g in b] for _, b in as_applied(positions(groups), batches)]
    assert applied == [["g0"], ["g1", "g2", "g3"], ["g4"]]
    # a batch cut short by the replay's range is applied with the members it has
    cut = [[g.group_id for g in b] for _, b in as_applied(positions(groups[:3]), batches)]
    assert cut == [["g0"], ["g1", "g2"]]


@pytest.mark.parametrize("old_log", [False, True], ids=["v2", "v1"])
def test_replay_verifies_a_log_with_a_coalesced_batch(old_log):
    groups, recorded = live_log()
    if old_log:
        recorded = [as_v1(u) for u in recorded]
        assert recorded[2].group_ids == ["g1", "g2", "g3"] and recorded[2].schema_version == 2
    _, res = replay(tiny(), positions(groups), step, recorded={u.event_id: u for u in recorded})
    assert res.divergence is None, res.divergence.describe()
    assert res.verified == len(recorded) == 6 and res.groups == 5 and res.applied == 5


def test_groups_are_replayed_in_the_order_the_learner_applied_them():
    # the paced learner applied g1 before g0, though the stream processor closed g0 first; g2 had
    # was dropped (no update) and g3 comes after the batch g4+g5
    groups = [group(i) for i in range(6)]
    groups[2] = groups[2].model_copy(update={"status": "skipped", "skip_reason": "partial"})  # dropped
    state, recorded = tiny(), []
    for batch in ([groups[1]], [groups[0]], [groups[4], groups[5]], [groups[3]]):
        state, ups = step(state, coalesce(batch))
        if len(batch) > 1:
            ups = [u.model_copy(update={"coalesced": len(batch), "group_ids": [g.group_id for g in batch]})
                   for u in ups]
        recorded += ups
    ordered = in_applied_order(positions(groups), recorded)
    # g2 changed nothing, so it stays after its neighbour in the log (g1)
    assert [g.group_id for _, g in ordered] == ["g1", "g2", "g0", "g4", "g5", "g3"]
    assert [p.offset for p, _ in ordered] == [1, 2, 0, 4, 5, 3]  # each keeps where it was read
    by_id = {u.event_id: u for u in recorded}
    _, res = replay(tiny(), ordered, step, recorded=by_id)
    assert res.divergence is None, res.divergence.describe()
    assert res.verified == len(recorded) == 8 and res.skipped == 1
    # in log order the same log diverges at once: the order is what makes it reproducible
    _, res = replay(tiny(), positions(groups), step, recorded=by_id)
    assert res.divergence is not None and res.divergence.offset == 0
