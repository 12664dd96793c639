"""Snapshots: weights, per-block optimiser state, RNG states, counters and free-form metadata.

Layout of a snapshot directory::

    model.safetensors      the model's state dict (block b's tensors start with ``blocks.b.``)
    ref.safetensors        the frozen reference, when the state keeps one
    optimizer.safetensors  ``opt.<b>.<param index>.<name>`` moment tensors, ``rng.*`` RNG states
    state.json             config, counters, optimiser hyper-parameters, metadata (written last)

``state.json`` is written last, so a directory without it is an interrupted write. The metadata
dict round-trips as JSON, which is where the daemon keeps the Kafka offsets it has consumed.

Every file is fsynced before ``state.json`` names the snapshot complete, and ``state.json`` itself
before ``save_snapshot`` returns: after a power cut, a snapshot that has its ``state.json`` has
all of its bytes too (a rename alone can reach the disk before the data it points to).
"""

from __future__ import annotations

import copy
import errno
import json
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from learners.core import LearnerConfig, LearnerState, build_state

FORMAT_VERSION = 1


class SnapshotUnreadable(ValueError):
    """A snapshot file whose content does not load: ``file`` names it, ``reason`` says why.
    Errors from the file system (missing file, disk errors) stay OSError, which names its file."""

    def __init__(self, file: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = Path(file)
        self.reason = reason


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory by path (a directory's fsync makes its entries durable)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:
        # some filesystems (certain network mounts) refuse fsync on a directory: its entries are
        # then as durable as that filesystem makes them, and the write must not fail for it
        if not (flags & getattr(os, "O_DIRECTORY", 0)) or e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    fsync_path(tmp)  # save_file does not sync, and the rename may otherwise reach the disk first
    os.replace(tmp, path)


def save_snapshot(state: LearnerState, directory: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write ``state`` to ``directory`` (created if needed) durably. ``extra_metadata`` must be JSON-able."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_save_tensors(state.model.state_dict(), d / "model.safetensors", {"format": "eigenloop"})
    if state.ref_model is not None:
        _atomic_save_tensors(state.ref_model.state_dict(), d / "ref.safetensors")
    tensors: dict[str, torch.Tensor] = {
        "rng.learner": state.generator.get_state(),
        "rng.torch_cpu": torch.get_rng_state(),
    }
    groups = []
    for b, opt in enumerate(state.optimizers):
        sd = opt.state_dict()
        groups.append(sd["param_groups"])
        for pidx, pstate in sd["state"].items():
            for name, v in pstate.items():
                tensors[f"opt.{b}.{pidx}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    _atomic_save_tensors(tensors, d / "optimizer.safetensors")
    meta = dict(state.metadata)
    meta.update(extra_metadata or {})
    doc = {
        "format_version": FORMAT_VERSION,
        "config": asdict(state.config),
        "policy_version": state.policy_version,
        "step": state.step,
        "block_steps": state.block_steps,
        "skipped_groups": state.skipped_groups,
        "rr_cursor": state.rr_cursor,
        "loss_ema": state.loss_ema,
        "optimizer_param_groups": groups,
        "metadata": meta,
    }
    # the tensor files' names must be durable before state.json can say the snapshot is complete
    fsync_path(d)
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    fsync_path(tmp)
    os.replace(tmp, d / "state.json")
    fsync_path(d)
    fsync_path(d.parent)  # a caller writing straight to its final name (the bootstrap) needs the entry too
    return d


def read_snapshot_info(directory: str | os.PathLike) -> dict:
    """The parsed ``state.json`` (config, counters, metadata) without loading any tensors."""
    return json.loads((Path(directory) / "state.json").read_text())


def is_snapshot(directory: str | os.PathLike) -> bool:
    return (Path(directory) / "state.json").is_file()


def _optimizer_state(tensors: dict[str, torch.Tensor], b: int, param_groups: list) -> dict:
    state: dict[int, dict] = {}
    prefix = f"opt.{b}."
    for key, v in tensors.items():
        if key.startswith(prefix):
            pidx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(pidx), {})[name] = v
    return {"state": state, "param_groups": param_groups}


@contextmanager
def _reading(file: Path):
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(file)  # safetensors' own OSErrors do not say which file
        raise
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise  # the machine's trouble, not the content's: an older snapshot would fail the same way
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the parsers raise
        raise SnapshotUnreadable(file, f"{type(e).__name__}: {e}") from e


def load_snapshot(directory: str | os.PathLike, device: str | None = None) -> LearnerState:
    """Rebuild the full learner state; ``device`` overrides the saved config's device.

    A file whose content does not load raises SnapshotUnreadable naming it; a file that cannot be
    read raises OSError."""
    d = Path(directory)
    with _reading(d / "state.json"):
        info = read_snapshot_info(d)
        # a snapshot written before the likelihood, the mirror and the grammar constraint existed
        # learned with the ELBO, no mirror, unconstrained: replaying its log must learn the same way
        # to reproduce its checksums
        cfg_dict = {"likelihood": "elbo", "mirror": False, "constrain": False, **info["config"]}
        if device is not None:
            cfg_dict = {**cfg_dict, "device": str(device)}
        config = LearnerConfig(**cfg_dict)
    state = build_state(config)  # outside: a failure here is the machine's, and every snapshot would share it
    with _reading(d / "state.json"):
        state.policy_version = info["policy_version"]
        state.step = info["step"]
        state.block_steps = list(info["block_steps"])
        state.skipped_groups = info["skipped_groups"]
        state.rr_cursor = info["rr_cursor"]
        state.loss_ema = list(info["loss_ema"])
        state.metadata = dict(info["metadata"])
    with _reading(d / "model.safetensors"):
        state.model.load_state_dict(load_file(str(d / "model.safetensors"), device=str(state.device)))
    if state.ref_model is not None and (d / "ref.safetensors").exists():
        with _reading(d / "ref.safetensors"):
            state.ref_model.load_state_dict(load_file(str(d / "ref.safetensors"), device=str(state.device)))
    with _reading(d / "optimizer.safetensors"):
        tensors = load_file(str(d / "optimizer.safetensors"))
        for b, opt in enumerate(state.optimizers):
            opt.load_state_dict(_optimizer_state(tensors, b, info["optimizer_param_groups"][b]))
        state.generator.set_state(tensors["rng.learner"])
        # last: the process-wide RNG changes only once everything else has loaded, so a snapshot
        # that fails leaves it for the one loaded after it
        torch.set_rng_state(tensors["rng.torch_cpu"])
    return state


SNAPSHOT_FILES = ("state.json", "model.safetensors", "optimizer.safetensors", "ref.safetensors")


def snapshot_under(root: str | os.PathLike, snapshot_dir: str | os.PathLike) -> Path:
    """``snapshot_dir`` resolved, provided it is a snapshot inside ``root`` (a relative path is
    taken from ``root``); ValueError otherwise. Symlinks are followed before the check, so a link
    (the directory's or one of its files') that leads out of ``root`` is refused too."""
    raw = Path(snapshot_dir)
    if ".." in raw.parts:
        raise ValueError(f"snapshot path {snapshot_dir}: '..' is not allowed")
    base = Path(root).resolve()
    target = (base / raw).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"snapshot path {snapshot_dir}: not a snapshot under the snapshot root {base}")
    if not is_snapshot(target):
        raise ValueError(f"snapshot path {snapshot_dir}: not a snapshot directory (no state.json)")
    for name in SNAPSHOT_FILES:
        f = target / name
        if f.exists() and not f.resolve().is_relative_to(base):
            raise ValueError(f"snapshot path {snapshot_dir}: {name} links out of the snapshot root {base}")
    return target


def _stage_block(state: LearnerState, f, tensors: dict[str, torch.Tensor], info: dict, b: int) -> tuple:
    """Block ``b`` of the snapshot loaded into copies of the live block and its optimiser: their
    strict loads check every key and shape, and the live ones are not touched."""
    block, opt = copy.deepcopy((state.model.blocks[b], state.optimizers[b]))  # one memo: opt keeps block's params
    prefix = f"blocks.{b}."
    block.load_state_dict({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    opt.load_state_dict(_optimizer_state(tensors, b, info["optimizer_param_groups"][b]))
    return block.state_dict(), opt.state_dict(), int(info["block_steps"][b]), info["loss_ema"][b]


def pin_blocks(state: LearnerState, snapshot_dir: str | os.PathLike, blocks: list[int], *,
               root: str | os.PathLike | None = None) -> LearnerState:
    """Restore only ``blocks``' weights and optimiser state from a snapshot (per-block rollback).

    All or nothing: every block is loaded into a copy first and the live state changes only once
    all of them loaded, so a bad snapshot raises ValueError (or OSError) and leaves ``state`` as it
    was. ``root``: accept only a snapshot under it (``snapshot_under``); None for callers that
    picked the snapshot from their own listing. Other blocks, the RNG and the counters are left
    alone, except that ``policy_version`` moves by one because the policy changed.
    """
    d = snapshot_under(root, snapshot_dir) if root is not None else Path(snapshot_dir)
    try:
        info = read_snapshot_info(d)
        tensors = load_file(str(d / "optimizer.safetensors"))
        with safe_open(str(d / "model.safetensors"), framework="pt", device=str(state.device)) as f:
            staged = {b: _stage_block(state, f, tensors, info, b) for b in blocks}
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - nothing was changed yet: any failure means "not this snapshot"
        raise ValueError(f"snapshot {d} cannot be pinned: {type(e).__name__}: {e}") from e
    # from here on the loads cannot fail on content: keys, shapes and groups were checked above
    for b, (weights, opt_state, block_steps, loss_ema) in staged.items():
        state.model.blocks[b].load_state_dict(weights)
        state.optimizers[b].load_state_dict(opt_state)
        state.block_steps[b] = block_steps
        state.loss_ema[b] = loss_ema
    state.policy_version += 1
    return state
