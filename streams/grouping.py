"""GRPO groups from outcomes, with TRL GRPOTrainer's advantage semantics. Pure.

Advantages (``trl/trainer/grpo_trainer.py``, ``_generate_and_score_completions``,
``multi_objective_aggregation="sum_then_normalize"``): ``A = r - mean_group(r)``, then, unless
``scale_rewards == "none"``, ``A / (std + 1e-4)`` where std is *Bessel-corrected*
(``trl.trainer.utils.nanstd``) over the group (``"group"``) or over every reward of the batch
(``"batch"``). A group whose reward std is ~0 (``torch.isclose(std, 0)``; the test is
``schemas.learn.rewards_have_signal``, the one the learner applies too) carries no signal: it
is still emitted, with ``status="skipped"`` and ``skip_reason="no signal"``.

In the stream every group closes on its own, so a group is its own batch there and ``"batch"``
gives the same numbers as ``"group"``. A learner that batches several closed groups can call
``compute_advantages`` on its batch to get TRL's batch scaling exactly.

Closing: a group closes when all G outcomes are in (``close_reason="all_in"``) or when its
window ends (``"expired"``): ``t0 + longest horizon + grace_s``. A partial group (G' < G) is
kept when ``partial == "keep"`` and ``G' >= min_partial``, else emitted as skipped with the
reason. Ids are derived from the group id alone, so a re-emission after a restart has the same
``event_id`` and consumers dedupe on it.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Mapping, Sequence

from schemas.agent import Action, Outcome
from schemas.ids import deterministic_event_id
from schemas.learn import NO_SIGNAL, GRPOGroup, rewards_have_signal
from schemas.settings import GroupConfig

ScaleRewards = Literal["group", "batch", "none"]
EPSILON = 1e-4  # TRL adds this to the std before dividing


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def bessel_std(xs: Sequence[float]) -> float:
    """Sample std (ddof=1) like ``trl.trainer.utils.nanstd``; NaN for fewer than two values."""
    n = len(xs)
    if n < 2:
        return math.nan
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def _scale_group(groups: Sequence[Sequence[float]]) -> list[float]:
    return [bessel_std(g) for g in groups]


def _scale_batch(groups: Sequence[Sequence[float]]) -> list[float]:
    std = bessel_std([r for g in groups for r in g])
    return [std] * len(groups)


def _scale_none(groups: Sequence[Sequence[float]]) -> list[float]:
    return [math.nan] * len(groups)  # no division; NaN marks "not used"


SCALERS: dict[str, Callable[[Sequence[Sequence[float]]], list[float]]] = {
    "group": _scale_group, "batch": _scale_batch, "none": _scale_none,
}


def compute_advantages(groups: Sequence[Sequence[float]], scale_rewards: ScaleRewards = "group",
                       epsilon: float = EPSILON) -> list[list[float]]:
    """Advantages for a batch of groups, exactly as TRL's GRPOTrainer computes them.

    >>> [[round(a, 4) for a in g] for g in compute_advantages([[1.0, 0.0], [2.0, 2.0]], "group")]
    [[0.707, -0.707], [0.0, 0.0]]
    >>> [[round(a, 4) for a in g] for g in compute_advantages([[1.0, 0.0], [2.0, 2.0]], "batch")]
    [[0.5222, -0.5222], [0.0, 0.0]]
    >>> compute_advantages([[1.0, 0.0]], "none")
    [[0.5, -0.5]]
    """
    scaler = SCALERS.get(scale_rewards)
    if scaler is None:
        raise ValueError(f"scale_rewards={scale_rewards!r}: use one of {sorted(SCALERS)}")
    stds = scaler(groups)
    out = []
    for g, std in zip(groups, stds):
        m = _mean(g)
        if scale_rewards == "none":
            out.append([r - m for r in g])
        elif math.isnan(std):
            out.append([0.0 for _ in g])  # TRL: NaN advantage -> nan_to_num -> 0
        else:
            out.append([(r - m) / (std + epsilon) for r in g])
    return out


def outcome_final(horizon_end_ns: int, event_time_ns: int) -> bool:
    """Whether a candidate's outcome can be scored once the market has reached ``event_time_ns``:
    only a record strictly after its horizon proves that the book path up to the horizon is
    complete (another record with the horizon's own timestamp may still come)."""
    return horizon_end_ns < event_time_ns


def all_in(horizon_ends_ns: Sequence[int], event_time_ns: int) -> bool:
    """Whether every candidate of a group is final at ``event_time_ns``: the group closes
    ``all_in``."""
    return all(outcome_final(h, event_time_ns) for h in horizon_ends_ns)


def window_end_ns(t0_ns: int, horizon_ends_ns: Sequence[int], grace_s: float) -> int:
    """The group's window end in event time: its longest horizon plus the grace period."""
    return max([t0_ns, *horizon_ends_ns]) + round(grace_s * 1e9)


def group_event_id(group_id: str, window_end: int) -> str:
    return deterministic_event_id(window_end // 1_000_000, "group", group_id)


def close_group(actions: Sequence[Action], outcomes: Mapping[int, Outcome], cfg: GroupConfig, *,
                close_reason: Literal["all_in", "expired"], window_end: int,
                ts_ingest: int | None = None, source: str = "streams") -> GRPOGroup:
    """The ``learn.groups`` record for a closing group.

    ``actions`` are the candidates that arrived (any order); ``outcomes`` maps candidate index
    to its outcome. Candidates without an outcome are left out (G' = len(outcomes)).
    """
    if not actions:
        raise ValueError("close_group needs at least one action of the group")
    by_index = {a.candidate_index: a for a in actions}
    indices = sorted(i for i in outcomes if i in by_index)
    first = by_index[indices[0]] if indices else actions[0]
    size = first.group_size
    rewards = [outcomes[i].reward for i in indices]
    status: Literal["complete", "partial", "skipped"] = "complete" if len(indices) >= size else "partial"
    skip_reason: str | None = None
    if status == "partial" and (cfg.partial == "drop" or len(indices) < cfg.min_partial):
        status, skip_reason = "skipped", (f"partial {len(indices)}/{size} dropped" if cfg.partial == "drop"
                                          else f"partial {len(indices)}/{size} < min_partial {cfg.min_partial}")
    if status != "skipped" and not rewards_have_signal(rewards):
        status, skip_reason = "skipped", NO_SIGNAL
    advantages = compute_advantages([rewards], cfg.scale_rewards)[0] if rewards else []
    if status == "skipped":
        advantages = [0.0] * len(rewards)
    kw = {} if ts_ingest is None else {"ts_ingest": ts_ingest}
    return GRPOGroup(
        event_id=group_event_id(first.group_id, window_end), ts_event=window_end, source=source,
        key=first.group_id, group_id=first.group_id, prompt_id=first.prompt_id, task=first.task,
        symbol=first.symbol, policy_version=first.policy_version, prompt=first.prompt,
        completions=[by_index[i].completion for i in indices], candidate_indices=indices,
        rewards=rewards, advantages=advantages, group_size=size, scale_rewards=cfg.scale_rewards,
        status=status, skip_reason=skip_reason, close_reason=close_reason, window_end_ns=window_end,
        **kw,
    )
