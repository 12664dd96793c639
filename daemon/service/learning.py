"""Pure helpers of the learner loop and its replay: coalescing groups under backpressure (and
rebuilding the batches from the recorded updates), reward averages, dedupe."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator, Mapping, Sequence, TypeVar

from schemas import BlockUpdate, GRPOGroup
from schemas.learn import BATCH_ID_SEP

RECENT_GROUPS = 10_000  # group ids remembered for dedupe; re-emissions come right after a restart
P = TypeVar("P")  # where a group was read (a log position)


def coalesce(groups: Sequence[GRPOGroup]) -> GRPOGroup:
    """Several closed groups as one update: completions, rewards and advantages concatenated.

    Each group's advantages were already normalised within that group, so concatenating keeps
    their scale; wd1's softmax weights then span the union, which damps each group's pull
    compared with separate steps. That is the price of keeping up, and why ``BlockUpdate``
    records which groups went into it (``group_ids``), so replay can coalesce the same groups
    the same way.
    """
    if len(groups) == 1:
        return groups[0]
    first = groups[0]
    return first.model_copy(update={
        "group_id": BATCH_ID_SEP.join(g.group_id for g in groups),
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


def recorded_batches(updates: Iterable[BlockUpdate]) -> dict[str, list[str]]:
    """The coalesced batches recorded updates name: first member's id -> every member's id."""
    return {u.group_ids[0]: list(u.group_ids) for u in updates if len(u.group_ids) > 1}


def in_applied_order(groups: Sequence[tuple[P, GRPOGroup]], updates: Iterable[BlockUpdate]) -> list[tuple[P, GRPOGroup]]:
    """``groups`` (in log order) in the order the live learner applied them, which ``updates``
    (``learn.updates`` in log order) records. A learner paced by the daemon's own decisions
    applies each group when its decision is due, not when the stream processor closed it, so
    two groups may reach the model in the opposite order of ``learn.groups``. A group with no
    recorded update (no signal, or not applied yet) keeps its place after the group before it
    in the log: it did not change the model, so only its neighbours' order matters.
    """
    rank: dict[str, int] = {}
    for i, u in enumerate(updates):
        for gid in u.group_ids:
            rank.setdefault(gid, i)
    keyed = []
    last = -1
    for i, (pos, g) in enumerate(groups):
        r = rank.get(g.group_id)
        if r is not None:
            last = r
            keyed.append(((r, 0, i), pos, g))
        else:
            keyed.append(((last, 1, i), pos, g))
    keyed.sort(key=lambda k: k[0])
    return [(pos, g) for _, pos, g in keyed]


def as_applied(groups: Iterable[tuple[P, GRPOGroup]],
               batches: Mapping[str, Sequence[str]]) -> Iterator[tuple[P, list[GRPOGroup]]]:
    """The groups in log order as the live learner applied them, each with where it was read:
    one by one, except the members of a coalesced batch (``recorded_batches``), which come
    together, at the first member's position. The learner coalesces neighbours only, so a batch
    ends at the first group outside it; one whose members are not all in range comes with the
    members that are.
    """
    held: list[GRPOGroup] = []
    held_pos: P | None = None
    want: Sequence[str] = ()
    for pos, g in groups:
        if held and g.group_id not in want:
            yield held_pos, held  # type: ignore[misc]
            held = []
        if not held and g.group_id in batches:
            held_pos, want, held = pos, batches[g.group_id], [g]
        elif held:
            held.append(g)
        else:
            yield pos, [g]
            continue
        if len(held) == len(want):
            yield held_pos, held  # type: ignore[misc]
            held = []
    if held:
        yield held_pos, held  # type: ignore[misc]


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
