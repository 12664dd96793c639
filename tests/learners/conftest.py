"""Shared fixtures for the learner tests: one small bootstrapped model, built once per session."""

import pytest
import torch

from learners.core import LearnerConfig
from learners.model import ModelConfig


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # the CI box has 2 shared cores; more threads than cores makes every small op slower
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def signal_snapshot(tmp_path_factory):
    """A tiny model bootstrapped on signal prompts with random sides (no opinion), as a snapshot."""
    from learners.bootstrap import bootstrapped_state
    from learners.snapshot import save_snapshot
    from tests.learners.signal_task import signal_pairs

    torch.set_num_threads(1)
    cfg = LearnerConfig(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2), gen_len=12,
                        sample_steps=12, lr=5e-4, device="cpu")
    state, info = bootstrapped_state(cfg, steps=600, progress=False, pairs_fn=signal_pairs, parse_prompts=None)
    path = tmp_path_factory.mktemp("signal") / "snap"
    save_snapshot(state, path, info)
    return path
