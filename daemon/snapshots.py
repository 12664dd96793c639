"""Snapshots on disk: ``<data>/snapshots/<NNNNNNNNNN>-v<policy_version>/``.

A snapshot directory is written under a temporary name and renamed into place, so a crash in the
middle leaves either the whole snapshot or none of it. The newest complete one is the one with
the highest learner step; the offsets it consumed are in its metadata under ``offsets``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from learners.core import LearnerState
from learners.snapshot import is_snapshot, load_snapshot, read_snapshot_info, save_snapshot


def snapshot_root(data_dir: Path) -> Path:
    return Path(data_dir) / "snapshots"


def list_snapshots(root: Path) -> list[Path]:
    """Complete snapshots, oldest first (by learner step, then name)."""
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.name.startswith(".") or not d.is_dir() or not is_snapshot(d):
            continue
        try:
            info = read_snapshot_info(d)
        except (OSError, ValueError):
            continue  # a corrupt snapshot is skipped, never loaded; the runbook says how to inspect it
        found.append((int(info.get("step", 0)), d.name, d))
    return [d for _, _, d in sorted(found)]


def newest_snapshot(root: Path) -> Path | None:
    snaps = list_snapshots(root)
    return snaps[-1] if snaps else None


def write_snapshot(state: LearnerState, root: Path, offsets: dict[str, int], keep: int = 5,
                   extra: dict | None = None, suffix: str = "") -> Path:
    """Write atomically, then prune to the newest ``keep`` (the bootstrap snapshot is never pruned)."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{state.step:010d}-v{state.policy_version}{suffix}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_snapshot(state, tmp, {"offsets": offsets, **(extra or {})})
    if final.exists():
        shutil.rmtree(final)  # same step written twice (a restart before any new group): same content
    os.replace(tmp, final)
    snaps = list_snapshots(root)
    for old in snaps[:-keep]:
        if read_snapshot_info(old).get("metadata", {}).get("source") != "bootstrap":
            shutil.rmtree(old, ignore_errors=True)
    return final


def snapshot_offsets(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in read_snapshot_info(path).get("metadata", {}).get("offsets", {}).items()}


def load(path: Path, device: str | None = None) -> LearnerState:
    return load_snapshot(path, device=device)
