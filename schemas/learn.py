"""Learning records: closed groups, weight updates and snapshots."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import Event


# ``GRPOGroup.skip_reason`` of a complete group whose rewards have no spread: it carries no reward
# signal, but the learner's regulariser still applies to it (``learners.core.step``)
NO_SIGNAL = "no signal"


class GRPOGroup(Event):
    """A closed group: G' candidates for one prompt with their rewards and advantages.

    Self-contained on purpose: the learner (and ``eigenloop replay``) needs nothing but this
    record to apply the update, so the model can be rebuilt from ``learn.groups`` alone.
    ``status`` is ``skipped`` for groups that carry no learning signal (zero reward spread) or
    that were partial under a drop policy; ``skip_reason`` says which. Keyed by group_id.
    """

    TYPE = "learn.group"

    group_id: str
    prompt_id: str = ""
    task: Literal["market", "social"] = "market"
    symbol: str
    policy_version: int = Field(ge=0)
    prompt: str
    completions: list[str]
    candidate_indices: list[int]
    rewards: list[float]
    advantages: list[float]
    group_size: int = Field(ge=1)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    status: Literal["complete", "partial", "skipped"] = "complete"
    skip_reason: str | None = None
    close_reason: Literal["all_in", "expired"] = "all_in"
    window_end_ns: int = 0


class BlockUpdate(Event):
    """One block's weight change. ``checksum`` is of that block's parameters after the step."""

    TYPE = "learn.update"

    block: int = Field(ge=0)
    step: int = Field(ge=0)
    group_id: str
    loss: float
    grad_norm: float
    checksum: str
    policy_version: int = Field(ge=0)
    update_norm: float = 0.0
    param_norm: float = 0.0
    lr: float = 0.0
    coalesced: int = 1
    # the step also learned from the group's mirror image (learners: LearnerConfig.mirror)
    mirrored: bool = False
    # what stood in for log pi(o|q): "trajectory" (exact) or "elbo"
    likelihood: str = "elbo"


class SnapshotMarker(Event):
    """A snapshot was written. ``offsets`` maps ``topic:partition`` to the next offset to consume."""

    TYPE = "learn.snapshot"

    snapshot_id: str
    path: str
    policy_version: int = Field(ge=0)
    step: int = Field(ge=0)
    offsets: dict[str, int] = {}
    checksum: str


class GuardAction(Event):
    """The collapse guard acted (raised temperature, turned on a regulariser, pinned blocks)."""

    TYPE = "learn.guard"

    action: Literal["raise_temperature", "regularise", "pin_blocks", "release"]
    reason: str
    policy_version: int = Field(ge=0)
    blocks: list[int] = []
    value: float = 0.0
