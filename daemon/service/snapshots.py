"""Snapshots on disk: ``<data>/snapshots/<NNNNNNNNNN>-v<policy_version>/``.

A snapshot directory is written under a temporary name (``.<name>.tmp-<pid>``), fsynced, renamed
into place and the rename fsynced, so a crash or a power cut in the middle leaves either the whole
snapshot or none of it (plus a temporary directory, removed at the next start). The newest
complete one is the one with the highest learner step; the offsets it consumed are in its
metadata under ``offsets``. A snapshot damaged anyway (disk errors, a copy gone wrong) is skipped
on start for the next older one: the log after it rebuilds what it held.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from daemon.logging import get_logger
from daemon.procs import pid_alive
from daemon.service import fault_hook, metrics
from learners.core import LearnerState
from learners.snapshot import (SnapshotUnreadable, fsync_path, is_snapshot, load_snapshot, read_snapshot_info,
                               save_snapshot)

log = get_logger("snapshots")
TEMP_MARK = ".tmp-"  # in the name of a snapshot still being written: ``.<name>.tmp-<pid>``


def snapshot_root(data_dir: Path) -> Path:
    return Path(data_dir) / "snapshots"


def scan_snapshots(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Complete snapshots, oldest first (by learner step, then name), and the ones whose
    state.json does not parse, each with the reason."""
    if not root.is_dir():
        return [], []
    found, corrupt = [], []
    for d in root.iterdir():
        if d.name.startswith(".") or not d.is_dir() or not is_snapshot(d):
            continue
        try:
            found.append((int(read_snapshot_info(d).get("step", 0)), d.name, d))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            corrupt.append((d, f"{type(e).__name__}: {e}"))
    return [d for _, _, d in sorted(found)], corrupt


def list_snapshots(root: Path) -> list[Path]:
    """Complete snapshots, oldest first. One whose state.json does not parse is left out, so it
    is never loaded nor pruned (evidence); ``load_newest`` reports it and also skips a snapshot
    whose state.json parses but whose tensors do not load."""
    return scan_snapshots(root)[0]


def newest_snapshot(root: Path) -> Path | None:
    snaps = list_snapshots(root)
    return snaps[-1] if snaps else None


def remove_stale_temps(root: Path) -> list[Path]:
    """Remove the temporary directories of writes that never finished (a crash mid-write).

    Only a dead writer's: one named with a live process's id may still be writing (a CLI next to
    a running daemon), except this process's own, which at start is a previous life's (in a
    container the restarted daemon often gets the same pid)."""
    removed = []
    if not root.is_dir():
        return removed
    for d in root.iterdir():
        if not (d.name.startswith(".") and TEMP_MARK in d.name and d.is_dir()):
            continue
        pid = d.name.rsplit(TEMP_MARK, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        log.warning("removed an interrupted snapshot write", path=str(d))
        removed.append(d)
    return removed


def load_newest(root: Path, device: str | None = None) -> tuple[LearnerState, Path] | None:
    """The newest snapshot that loads, and its path (its offsets are where to resume); None when
    there is none at all. Interrupted writes are removed first. A snapshot that does not load is
    logged with the file and the reason, counted, left in place (it is evidence, and pruning
    removes it in time) and the next older one is tried. Raises SnapshotUnreadable when
    snapshots exist but none loads: starting over from a fresh model is an operator's decision."""
    remove_stale_temps(root)
    snaps, corrupt = scan_snapshots(root)
    failures = []

    def failed(path: Path, file: Path, reason: str) -> None:
        failures.append(f"{file}: {reason}")
        metrics.SNAPSHOT_LOAD_FAILURES.inc()
        log.error("snapshot does not load: skipped for the previous one", snapshot=str(path), file=str(file),
                  reason=reason)

    for path, reason in corrupt:
        failed(path, path / "state.json", reason)
    for path in reversed(snaps):
        try:
            return load_snapshot(path, device=device), path
        except SnapshotUnreadable as e:
            failed(path, e.file, e.reason)
        except OSError as e:
            failed(path, Path(e.filename or path), f"{type(e).__name__}: {e}")
    if snaps or corrupt:
        raise SnapshotUnreadable(root, f"no snapshot loads: {'; '.join(failures)}")
    return None


def write_snapshot(state: LearnerState, root: Path, offsets: dict[str, int], keep: int = 5,
                   extra: dict | None = None, suffix: str = "") -> Path:
    """Write atomically and durably, then prune to the newest ``keep`` (the bootstrap snapshot
    is never pruned)."""
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        fsync_path(root.parent)
    name = f"{state.step:010d}-v{state.policy_version}{suffix}"
    final = root / name
    tmp = root / f".{name}{TEMP_MARK}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_snapshot(state, tmp, {"offsets": offsets, **(extra or {})})  # fsyncs each file and the directory
    # opt-in (EIGENLOOP_FAULT_HOOK), inert unset: written under the temporary name, not yet published
    fault_hook.reached("snapshot")
    if final.exists():
        shutil.rmtree(final)  # same step written twice (a restart before any new group): same content
    os.replace(tmp, final)
    fsync_path(root)  # until the rename is durable, a power cut brings back the previous snapshot
    fault_hook.left("snapshot")
    snaps = list_snapshots(root)
    for old in snaps[:-keep]:
        if read_snapshot_info(old).get("metadata", {}).get("source") != "bootstrap":
            shutil.rmtree(old, ignore_errors=True)
    return final


def snapshot_offsets(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in read_snapshot_info(path).get("metadata", {}).get("offsets", {}).items()}


def load(path: Path, device: str | None = None) -> LearnerState:
    return load_snapshot(path, device=device)
