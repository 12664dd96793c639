"""Learning records: closed groups, weight updates and snapshots."""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import Field, model_validator

from schemas.base import Event


# ``GRPOGroup.skip_reason`` of a complete group whose rewards have no spread: it carries no reward
# signal, but the learner's regulariser still applies to it (``learners.core.step``)
NO_SIGNAL = "no signal"

# Rewards whose sample std is at most this carry no signal. It is TRL GRPOTrainer's test
# (``torch.isclose(std, 0)``: atol 1e-8, and rtol does nothing against zero), so the groups
# skipped here are the ones TRL counts in ``frac_reward_zero_std``; far below any reward's
# resolution (basis points, engagement counts), far above float64 noise around a constant.
SIGNAL_STD_ATOL = 1e-8


def rewards_have_signal(rewards: Sequence[float]) -> bool:
    """True when the rewards differ enough to learn from: two or more, with a Bessel-corrected
    std (TRL's ``nanstd``) above ``SIGNAL_STD_ATOL``.

    >>> rewards_have_signal([1.0, 0.0]), rewards_have_signal([1.5, 1.5]), rewards_have_signal([1.0])
    (True, False, False)
    """
    n = len(rewards)
    if n < 2:
        return False  # TRL's std of one value is NaN: no spread to learn from
    mean = sum(rewards) / n
    return math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1)) > SIGNAL_STD_ATOL


# Bounds on one group, so a single record cannot stall or exhaust the learner: its step costs
# about candidates x (prompt + gen_len)^2 per block. Real records are far inside them: a market
# prompt is ~100 bytes, a social one a few posts of 32 bytes; the learner reads only gen_len
# (tens of) bytes of a completion; groups hold group_size (8 by default) candidates.
MAX_PROMPT_CHARS = 4096
MAX_COMPLETION_CHARS = 1024
MAX_CANDIDATES = 256


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
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    completions: list[str] = Field(max_length=MAX_CANDIDATES)
    candidate_indices: list[int]
    rewards: list[float]
    advantages: list[float]
    group_size: int = Field(ge=1)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    status: Literal["complete", "partial", "skipped"] = "complete"
    skip_reason: str | None = None
    close_reason: Literal["all_in", "expired"] = "all_in"
    window_end_ns: int = 0

    # A poison group is dead-lettered at the door rather than discovered in the model. Checked
    # here, not with Annotated list items: the analytics DDL maps plain element types.
    @model_validator(mode="after")
    def _learnable(self) -> "GRPOGroup":
        # the learner pairs completion i with advantage i: misaligned lists would teach the wrong
        # candidate, or fail in the middle of a step
        lengths = {"completions": len(self.completions), "rewards": len(self.rewards),
                   "advantages": len(self.advantages), "candidate_indices": len(self.candidate_indices)}
        if len(set(lengths.values())) > 1:
            raise ValueError("completions, rewards, advantages and candidate_indices differ in length "
                             f"({', '.join(f'{k}={v}' for k, v in lengths.items())})")
        for i, c in enumerate(self.completions):
            if len(c) > MAX_COMPLETION_CHARS:
                raise ValueError(f"completions[{i}]: {len(c)} chars, more than {MAX_COMPLETION_CHARS}")
        # one NaN or inf advantage turns every weight the step touches into NaN
        for name in ("rewards", "advantages"):
            for i, v in enumerate(getattr(self, name)):
                if not math.isfinite(v):
                    raise ValueError(f"{name}[{i}]: {v} is not finite")
        return self

    @property
    def has_signal(self) -> bool:
        """Whether the learner's reward term has anything to learn from: the group is not
        skipped and its rewards have spread (``rewards_have_signal``)."""
        return self.status != "skipped" and rewards_have_signal(self.rewards)


# A batch of groups the learner coalesced is applied as one group whose id is its members' ids
# joined with this; group ids are UUIDs, which never hold it
BATCH_ID_SEP = "+"


class BlockUpdate(Event):
    """One block's weight change. ``checksum`` is of that block's parameters after the step.

    ``group_id`` names what the step applied (the event id derives from it); ``group_ids`` lists
    the closed groups it learned from, in the order they were concatenated: one, or every
    member of a batch the learner coalesced under backpressure, so replay can rebuild the batch.
    Left empty by a writer, it is the one group ``group_id`` names.
    """

    TYPE = "learn.update"
    VERSION = 2

    block: int = Field(ge=0)
    step: int = Field(ge=0)
    group_id: str
    group_ids: list[str] = []
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

    @model_validator(mode="after")
    def _one_group_by_default(self) -> "BlockUpdate":
        if not self.group_ids:
            self.group_ids = [self.group_id]
        return self


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
