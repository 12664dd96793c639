"""Which blocks learn from a group: ``BLOCK_SELECTIONS``, one small rule per value of
``LearnerConfig.block_selection``, as ``learners.grpo.LOSSES`` is for ``loss_type``.

A rule takes the learner state and returns the chosen block indices, sorted, so that the blocks
always step (and draw their masks) in the same order whichever rule chose them. A rule may move
the state's round-robin cursor; ``learners.core.step`` puts it back when it refuses the group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learners.core import LearnerState


def all_blocks(state: LearnerState) -> list[int]:
    """Every block, every group: the exact wd1 gradient for the whole model."""
    return list(range(state.config.model.n_blocks))


def round_robin(state: LearnerState) -> list[int]:
    """``blocks_per_group`` blocks in turn: each block learns from every B/k-th group."""
    B, k = state.config.model.n_blocks, state.config.blocks_per_group
    chosen = [(state.rr_cursor + i) % B for i in range(k)]
    state.rr_cursor = (state.rr_cursor + k) % B
    return sorted(chosen)


def topk_loss(state: LearnerState) -> list[int]:
    """The ``blocks_per_group`` blocks with the largest recent |loss| (EMA). A block never updated
    has no EMA yet and counts as the largest, so every block gets its first step early; ties go
    to the lower index."""
    key = [(-(float("inf") if e is None else e), b) for b, e in enumerate(state.loss_ema)]
    return sorted(b for _, b in sorted(key)[:state.config.blocks_per_group])


BLOCK_SELECTIONS: dict[str, Callable[[LearnerState], list[int]]] = {
    "all": all_blocks, "round_robin": round_robin, "topk_loss": topk_loss,
}


def select_blocks(state: LearnerState) -> list[int]:
    """The blocks this group updates, by ``state.config.block_selection``."""
    return BLOCK_SELECTIONS[state.config.block_selection](state)
