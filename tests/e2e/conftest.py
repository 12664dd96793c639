"""Fixtures shared by the e2e tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import BOOT_STEPS, TINY_LEARNER


@pytest.fixture(scope="session")
def tiny_initial_snapshot(tmp_path_factory) -> Path:
    """The tiny model, bootstrapped once per session: every e2e daemon starts from it."""
    from learners.bootstrap import ensure_initial_snapshot
    from learners.core import LearnerConfig

    path = tmp_path_factory.mktemp("initial") / "snapshot"
    return ensure_initial_snapshot(path, LearnerConfig(**TINY_LEARNER), steps=BOOT_STEPS, progress=False)
