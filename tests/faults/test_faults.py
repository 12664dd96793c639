"""Fault injection (short version in `make test`; `make faults` runs the full one).

EIGENLOOP_FAULTS_KILLS sets the number of kill -9s (default 10; `make faults` uses 50)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from chaos import run_chaos


@pytest.fixture(scope="module")
def initial_snapshot(tmp_path_factory) -> Path:
    from learners.bootstrap import ensure_initial_snapshot
    from learners.core import LearnerConfig

    from harness import TINY_LEARNER

    return ensure_initial_snapshot(tmp_path_factory.mktemp("faults-initial") / "snapshot",
                                   LearnerConfig(**TINY_LEARNER), steps=250, progress=False)


@pytest.mark.kafka
@pytest.mark.timeout(2400)
def test_fault_injection(tmp_path, shared_data, initial_snapshot):
    kills = int(os.environ.get("EIGENLOOP_FAULTS_KILLS", "10"))
    fig = asyncio.run(run_chaos(tmp_path, shared_data, initial_snapshot, kills=kills, ws_frames=10_000,
                                kafka_records=1_000, seed=kills, speed=2.0 if kills <= 10 else 1.0))
    fig.print()
    assert sum(fig.kills.values()) == kills and fig.broker_restarts == 1
    assert fig.duplicate_actions == 0
    assert fig.lost_groups == 0 and fig.groups > 0
    assert fig.ws_dead_letters == fig.ws_frames_injected == 10_000
    assert fig.kafka_dead_letters == fig.kafka_records_injected == 1_000
    assert fig.checksum_matches, "final model checksum differs from a clean replay of learn.groups"
    assert all(fig.alive_at_end.values()), fig.alive_at_end
