"""Shared helpers for the learner benchmarks (benchmarks/learner_*.py)."""

from __future__ import annotations

import sysconfig
from contextlib import contextmanager
from pathlib import Path

import torch

from learners.model import ModelConfig


def stdlib_corpus(max_bytes: int) -> tuple[bytes, str]:
    """Python's own standard-library sources (present on every machine with Python): bytes + where."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for f in sorted(root.glob("*.py")):
        out += f.read_bytes()
        if len(out) >= max_bytes:
            break
    return bytes(out[:max_bytes]), f"{root}/*.py (sorted, first {max_bytes} bytes)"


def windows(data: bytes, seq_len: int, n: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq_len, (n,), generator=generator)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return torch.stack([buf[s:s + seq_len] for s in starts.tolist()]).long()


def block_local_and_e2e(d: int, n_head: int, n_blocks: int, layers_per_block: int) -> tuple[ModelConfig, ModelConfig]:
    """Same width and total depth: B blocks of L layers vs one block of B*L layers (end-to-end)."""
    local = ModelConfig(n_blocks=n_blocks, n_layer=layers_per_block, n_embd=d, n_head=n_head)
    e2e = ModelConfig(n_blocks=1, n_layer=n_blocks * layers_per_block, n_embd=d, n_head=n_head)
    return local, e2e


@contextmanager
def saved_activation_bytes():
    """Bytes autograd saves for backward inside the block (activation memory; works on any device)."""
    total = {"bytes": 0}

    def pack(t):
        total["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
