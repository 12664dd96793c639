"""Snapshots: weights, per-block optimiser state, RNG states, counters and free-form metadata.

Layout of a snapshot directory::

    model.safetensors      the model's state dict (block b's tensors start with ``blocks.b.``)
    ref.safetensors        the frozen reference, when the state keeps one
    optimizer.safetensors  ``opt.<b>.<param index>.<name>`` moment tensors, ``rng.*`` RNG states
    state.json             config, counters, optimiser hyper-parameters, metadata (written last)

``state.json`` is written last, so a directory without it is an interrupted write. The metadata
dict round-trips as JSON, which is where the daemon keeps the Kafka offsets it has consumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from learners.core import LearnerConfig, LearnerState, build_state

FORMAT_VERSION = 1


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def save_snapshot(state: LearnerState, directory: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write ``state`` to ``directory`` (created if needed). ``extra_metadata`` must be JSON-able."""
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
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, d / "state.json")
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


def load_snapshot(directory: str | os.PathLike, device: str | None = None) -> LearnerState:
    """Rebuild the full learner state; ``device`` overrides the saved config's device."""
    d = Path(directory)
    info = read_snapshot_info(d)
    # a snapshot written before the likelihood, the mirror and the grammar constraint existed
    # learned with the ELBO, no mirror, unconstrained: replaying its log must learn the same way
    # to reproduce its checksums
    cfg_dict = {"likelihood": "elbo", "mirror": False, "constrain": False, **info["config"]}
    if device is not None:
        cfg_dict = {**cfg_dict, "device": str(device)}
    state = build_state(LearnerConfig(**cfg_dict))
    state.model.load_state_dict(load_file(str(d / "model.safetensors"), device=str(state.device)))
    if state.ref_model is not None and (d / "ref.safetensors").exists():
        state.ref_model.load_state_dict(load_file(str(d / "ref.safetensors"), device=str(state.device)))
    tensors = load_file(str(d / "optimizer.safetensors"))
    for b, opt in enumerate(state.optimizers):
        opt.load_state_dict(_optimizer_state(tensors, b, info["optimizer_param_groups"][b]))
    state.generator.set_state(tensors["rng.learner"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    state.policy_version = info["policy_version"]
    state.step = info["step"]
    state.block_steps = list(info["block_steps"])
    state.skipped_groups = info["skipped_groups"]
    state.rr_cursor = info["rr_cursor"]
    state.loss_ema = list(info["loss_ema"])
    state.metadata = dict(info["metadata"])
    return state


def pin_blocks(state: LearnerState, snapshot_dir: str | os.PathLike, blocks: list[int]) -> LearnerState:
    """Restore only ``blocks``' weights and optimiser state from a snapshot (per-block rollback).

    Other blocks, the RNG and the counters are left alone, except that ``policy_version`` moves
    by one because the policy changed.
    """
    d = Path(snapshot_dir)
    info = read_snapshot_info(d)
    with safe_open(str(d / "model.safetensors"), framework="pt", device=str(state.device)) as f:
        for b in blocks:
            prefix = f"blocks.{b}."
            sd = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            state.model.blocks[b].load_state_dict(sd)
    tensors = load_file(str(d / "optimizer.safetensors"))
    for b in blocks:
        state.optimizers[b].load_state_dict(_optimizer_state(tensors, b, info["optimizer_param_groups"][b]))
        state.block_steps[b] = info["block_steps"][b]
        state.loss_ema[b] = info["loss_ema"][b]
    state.policy_version += 1
    return state
