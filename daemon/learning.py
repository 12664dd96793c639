"""Pure helpers of the learner loop: coalescing groups under backpressure, reward averages."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

from learners.core import has_signal
from schemas import GRPOGroup

COALESCE_SEP = "+"
RECENT_GROUPS = 10_000  # group ids remembered for dedupe; re-emissions come right after a restart


def coalesce(groups: Sequence[GRPOGroup]) -> GRPOGroup:
    """Several closed groups as one update: completions, rewards and advantages concatenated.

    Each group's advantages were already normalised within that group, so concatenating keeps
    their scale; wd1's softmax weights then span the union, which damps each group's pull
    compared with separate steps. That is the price of keeping up, and why ``BlockUpdate``
    records how many groups went into it. The id lists every member, so replay can coalesce
    the same groups the same way.
    """
    if len(groups) == 1:
        return groups[0]
    first = groups[0]
    return first.model_copy(update={
        "group_id": COALESCE_SEP.join(g.group_id for g in groups),
        "completions": [c for g in groups for c in g.completions],
        "candidate_indices": [i for g in groups for i in g.candidate_indices],
        "rewards": [r for g in groups for r in g.rewards],
        "advantages": [a for g in groups for a in g.advantages],
        "group_size": sum(g.group_size for g in groups),
        # a prompt per completion would be exact; the learner takes one prompt per group, so
        # only groups sharing a prompt may be coalesced (see ``coalescible``)
    })


def coalescible(a: GRPOGroup, b: GRPOGroup) -> bool:
    return a.prompt == b.prompt and a.task == b.task


def plan_batches(groups: Sequence[GRPOGroup], max_pending: int, mode: str) -> tuple[list[list[GRPOGroup]], int]:
    """Decide what to apply when ``groups`` are waiting: a list of batches (each one update)
    and the number of groups dropped. Under ``max_pending`` every group is its own update.
    Over it, ``skip`` drops the oldest surplus and ``coalesce`` merges neighbours that share a
    prompt, then drops whatever is still over the limit."""
    if len(groups) <= max_pending:
        return [[g] for g in groups], 0
    if mode == "skip":
        surplus = len(groups) - max_pending
        return [[g] for g in groups[surplus:]], surplus
    batches: list[list[GRPOGroup]] = []
    for g in groups:
        if batches and coalescible(batches[-1][-1], g):
            batches[-1].append(g)
        else:
            batches.append([g])
    dropped = 0
    if len(batches) > max_pending:
        surplus = len(batches) - max_pending
        dropped = sum(len(b) for b in batches[:surplus])
        batches = batches[surplus:]
    return batches, dropped


class Ewma:
    def __init__(self, alpha: float = 0.05):
        self.alpha = alpha
        self.value: float | None = None

    def update(self, x: float) -> float:
        self.value = x if self.value is None else (1 - self.alpha) * self.value + self.alpha * x
        return self.value


def replay_plan(groups: Sequence[GRPOGroup], applied_ids: Sequence[str] | None) -> list[list[GRPOGroup]]:
    """What the live learner applied, rebuilt from the log: the groups in log order, batched
    the way the recorded updates say (``a+b`` ids are coalesced batches), leaving out groups the
    live learner dropped under backpressure. With no recorded updates, every group in order.

    Groups without signal stay in: the learner's step counts them and changes nothing, as live.
    """
    if applied_ids is None:
        return [[g] for g in groups]
    by_id = {g.group_id: g for g in groups}
    batches = {gid.split(COALESCE_SEP)[0]: gid.split(COALESCE_SEP) for gid in applied_ids}
    members = {m for ms in batches.values() for m in ms}
    plan: list[list[GRPOGroup]] = []
    for g in groups:
        if g.group_id in batches:
            plan.append([by_id[m] for m in batches[g.group_id] if m in by_id])
        elif g.group_id in members:
            continue  # a later member of a coalesced batch, applied with its first member
        elif not has_signal(g):
            plan.append([g])
        # else: a group with signal that no update mentions was dropped under backpressure
    return plan


class RecentIds:
    """The last ``capacity`` ids seen, in order, for at-least-once dedupe in bounded memory."""

    def __init__(self, capacity: int, initial: Iterable[str] = ()):
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        for i in initial:
            self.add(i)

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def ids(self) -> list[str]:
        return list(self._ids)


def first_occurrences(groups: Iterable[GRPOGroup], seen: Iterable[str] = ()) -> list[GRPOGroup]:
    """Groups in log order without re-emitted duplicates, as the live learner applies them."""
    recent = RecentIds(RECENT_GROUPS, seen)
    out = []
    for g in groups:
        if g.group_id in recent:
            continue
        recent.add(g.group_id)
        out.append(g)
    return out
