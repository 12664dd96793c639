"""``eigenloop replay``: rebuild the model from a snapshot plus ``learn.groups``, optionally
verifying every step against the recorded ``learn.updates``.

The learner's ``step`` is pure and draws all randomness from the state's generator, and each
BlockUpdate's event_id is derived from (group, block, policy_version). So a replayed update
has the same id as the recorded one, and verification is a dictionary lookup per update:
same id, same checksum — or the first divergence, reported with where it happened.

Time is split into *bookkeeping* (reading, decoding, matching, comparing) and *model compute*
(``step``), so a slow replay says which of the two to look at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from daemon.eventlog import Position, read_range
from daemon.service.learning import RECENT_GROUPS, RecentIds, as_applied, coalesce, recorded_batches
from schemas import BlockUpdate, GRPOGroup
from schemas.settings import Settings

StepFn = Callable[[Any, GRPOGroup], tuple[Any, list[BlockUpdate]]]


@dataclass(frozen=True)
class Divergence:
    offset: int
    partition: int
    group_id: str
    block: int
    policy_version: int
    expected: str | None  # the recorded checksum; None when no update was recorded
    got: str | None  # the replayed checksum; None when the replay made no such update

    def describe(self) -> str:
        where = f"learn.groups[{self.partition}]@{self.offset} group {self.group_id} block {self.block} " \
                f"policy_version {self.policy_version}"
        if self.expected is None:
            return f"{where}: replay made an update the log does not have (checksum {self.got[:12] if self.got else ''})"
        if self.got is None:
            return f"{where}: the log has an update (checksum {self.expected[:12]}) the replay did not make"
        return f"{where}: recorded checksum {self.expected[:12]}…, replayed {self.got[:12]}…"


@dataclass
class ReplayResult:
    groups: int = 0
    applied: int = 0
    skipped: int = 0
    duplicates: int = 0
    updates: int = 0
    verified: int = 0
    divergence: Divergence | None = None
    bookkeeping_s: float = 0.0
    compute_s: float = 0.0
    read_s: float = 0.0
    policy_version: int = 0
    checksums: dict[int, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        total = self.bookkeeping_s + self.read_s
        return {
            "groups": self.groups, "applied": self.applied, "skipped": self.skipped, "duplicates": self.duplicates,
            "updates": self.updates,
            "verified_updates": self.verified, "policy_version": self.policy_version,
            "first_divergence": self.divergence.describe() if self.divergence else None,
            "bookkeeping_groups_per_s": round(self.groups / total, 1) if total > 0 else None,
            "model_compute_s": round(self.compute_s, 3), "read_s": round(self.read_s, 3),
            "checksums": {str(b): c for b, c in sorted(self.checksums.items())},
        }


def snapshot_offsets(info: dict[str, Any], topic_suffix: str = "learn.groups") -> dict[int, int] | None:
    """The next learn.groups offsets a snapshot recorded in its metadata (``topic:partition``)."""
    offsets = info.get("metadata", {}).get("offsets") or {}
    found = {}
    for key, off in offsets.items():
        name, _, part = str(key).rpartition(":")
        if name.endswith(topic_suffix) and part.isdigit():
            found[int(part)] = int(off)
    return found or None


async def read_groups(settings: Settings, *, start_offsets: dict[int, int] | None = None,
                      start_ms: int | None = None, end_offsets: dict[int, int] | None = None,
                      end_ms: int | None = None, topic: str = "learn.groups",
                      on_record: Callable[[], None] | None = None) -> list[tuple[Position, GRPOGroup]]:
    """The closed groups in the range, in log order (one partition: the learner's total order)."""
    out: list[tuple[Position, GRPOGroup]] = []
    async for pos, ev in read_range(settings, topic, start_offsets=start_offsets,
                                    start_timestamp_ms=start_ms if start_offsets is None else None,
                                    end_offsets=end_offsets):
        if on_record is not None:
            on_record()
        if end_ms is not None and pos.timestamp_ms >= end_ms:
            continue  # other partitions may still be inside the range
        if isinstance(ev, GRPOGroup):
            out.append((pos, ev))
    if len({pos.partition for pos, _ in out}) > 1:
        # several partitions have no total order: merge them by record time, as the learner did
        out.sort(key=lambda pe: (pe[0].timestamp_ms, pe[0].partition, pe[0].offset))
    return out


async def read_updates(settings: Settings, since_ms: int | None, topic: str = "learn.updates") -> dict[str, BlockUpdate]:
    """Recorded updates by event_id. The first copy wins: a re-emitted duplicate is the same."""
    recorded: dict[str, BlockUpdate] = {}
    async for _, ev in read_range(settings, topic, start_timestamp_ms=since_ms):
        if isinstance(ev, BlockUpdate):
            recorded.setdefault(ev.event_id, ev)
    return recorded


def replay(state: Any, groups: Iterable[tuple[Position, GRPOGroup]], step_fn: StepFn, *,
           recorded: dict[str, BlockUpdate] | None = None, stop_at_divergence: bool = True,
           on_group: Callable[[], None] | None = None,
           on_updates: Callable[[GRPOGroup, list[BlockUpdate]], None] | None = None,
           seen_groups: Iterable[str] = (), batches: Mapping[str, Sequence[str]] | None = None) -> tuple[Any, ReplayResult]:
    """Apply ``groups`` to ``state`` with ``step_fn``; compare with ``recorded`` when given.
    ``batches`` (``recorded_batches``) are the groups the live learner coalesced; by default
    those ``recorded`` names."""
    res = ReplayResult()
    matched: set[str] = set()
    by_group: dict[str, list[BlockUpdate]] = {}
    for u in (recorded or {}).values():
        by_group.setdefault(u.group_id, []).append(u)
    clock = time.perf_counter
    seen = RecentIds(RECENT_GROUPS, seen_groups)

    def unique() -> Iterable[tuple[Position, GRPOGroup]]:
        for pos, group in groups:
            if group.group_id in seen:
                res.duplicates += 1
                continue  # a re-emitted group: the live learner applied it once, so does the replay
            seen.add(group.group_id)
            yield pos, group

    # batches the live learner coalesced are applied as it applied them, by the recorded updates
    if batches is None:
        batches = recorded_batches((recorded or {}).values())
    for pos, batch in as_applied(unique(), batches):
        group = coalesce(batch)
        t0 = clock()
        state, updates = step_fn(state, group)
        t1 = clock()
        res.compute_s += t1 - t0
        res.groups += len(batch)
        if updates:
            res.applied += len(batch)
            res.updates += len(updates)
        else:
            res.skipped += len(batch)
        for u in updates:
            res.checksums[u.block] = u.checksum
            res.policy_version = max(res.policy_version, u.policy_version)
            if recorded is None or res.divergence is not None:
                continue
            want = recorded.get(u.event_id)
            if want is None or want.checksum != u.checksum:
                res.divergence = Divergence(pos.offset, pos.partition, group.group_id, u.block, u.policy_version,
                                            None if want is None else want.checksum, u.checksum)
            else:
                matched.add(u.event_id)
                res.verified += 1
        if recorded is not None and res.divergence is None:
            # every update the log has for this group must have been made by the replay too
            extra = [u for u in by_group.get(group.group_id, []) if u.event_id not in matched]
            if extra:
                u = extra[0]
                res.divergence = Divergence(pos.offset, pos.partition, group.group_id, u.block, u.policy_version,
                                            u.checksum, None)
        if on_updates is not None:
            on_updates(group, updates)
        if on_group is not None:
            for _ in batch:
                on_group()
        res.bookkeeping_s += clock() - t1
        if res.divergence is not None and stop_at_divergence:
            break
    return state, res


def load_state(snapshot: Path, device: str) -> tuple[Any, dict[str, Any]]:
    """The learner state in a snapshot directory, and its metadata (for start offsets)."""
    from learners.snapshot import is_snapshot, load_snapshot, read_snapshot_info

    if not is_snapshot(snapshot):
        raise FileNotFoundError(f"{snapshot} is not a snapshot directory (no state.json)")
    return load_snapshot(snapshot, device=device), read_snapshot_info(snapshot)


def deterministic_torch() -> None:
    """Bit-exact replay needs deterministic kernels (the learner records with them on CPU)."""
    import torch

    torch.use_deterministic_algorithms(True)
