"""Fixtures for the guard tests: one torch thread, and one bootstrapped tiny learner for the package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    # On a loaded machine, torch's intra-op threads spin against each other: the tiny models
    # here run ~20x faster on one thread than on two. Deterministic algorithms keep runs exact.
    # Package scope: set before the module- and session-scoped fixtures that train, undone after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def bootstrap_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that speaks ten actions of the real grammar, with its frozen reference."""
    from learners.bootstrap import bootstrap
    from learners.core import build_state, reset_reference
    from learners.snapshot import save_snapshot
    from tests.guard.harness import bootstrap_pairs, tiny_config

    state = build_state(tiny_config())
    bootstrap(state, steps=400, batch_size=32, lr=1e-2, seed=0, progress=False, pairs_fn=bootstrap_pairs)
    reset_reference(state)
    return save_snapshot(state, tmp_path_factory.mktemp("guard") / "bootstrap", {"source": "bootstrap"})
