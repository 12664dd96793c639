"""Fault injection (short version in `make test`; `make faults` runs the full one).

EIGENLOOP_FAULTS_KILLS sets the number of kill -9s (default 10; `make faults` uses 50). Besides the
correctness figures, the test checks where the kills landed: spread over the whole chaos window,
from the learner's first group to the replay's last line (no tenth of it holds more than twice
its share, the last kill in its final fifth), and a third or more of the daemon kills inside its
apply or snapshot windows, as the daemon itself recorded (``daemon.service.fault_hook``, ``killer``)."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import pytest

from chaos import run_chaos
from killer import print_report


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
    rep = fig.kill_report
    print_report(rep)
    assert sum(fig.kills.values()) == kills and fig.broker_restarts == 1
    # spread: no tenth of the chaos window holds more than twice its share (3 for a short run),
    # and the kills reach its final fifth
    assert max(rep["per_tenth_of_window"]) <= max(3, math.ceil(kills / 5)), rep["per_tenth_of_window"]
    assert rep["first_last_at"][1] >= 0.8, rep["first_last_at"]
    # a third of the daemon kills or more inside a window, by the daemon's own account
    in_window = rep["daemon_states"].get("apply", 0) + rep["daemon_states"].get("snapshot", 0)
    assert fig.kills["daemon"] >= 1 and 3 * in_window >= fig.kills["daemon"], rep["daemon_states"]
    assert fig.duplicate_actions == 0
    assert fig.lost_groups == 0 and fig.groups > 0
    assert fig.ws_dead_letters == fig.ws_frames_injected == 10_000
    assert fig.kafka_dead_letters == fig.kafka_records_injected == 1_000
    assert fig.checksum_matches, "final model checksum differs from a clean replay of learn.groups"
    assert all(fig.alive_at_end.values()), fig.alive_at_end
