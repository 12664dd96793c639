"""Fixtures of the daemon tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One torch thread: the CI box has 2 shared cores, and more threads than cores make every
    small op of the tiny models slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
