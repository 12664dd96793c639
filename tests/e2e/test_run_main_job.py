"""``eigenloop run``, the main job, as a newcomer runs it: the default replay is paced by the loop
(no decision skipped), every sampled action parses, every decision with a reward spread becomes a
learning group, the run prints what it learned, and a replay is reproducible to the last id and
the last weight."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from pathlib import Path

import pytest

from schemas.settings import HttpSettings, KafkaSettings, LearnerSettings, Settings

from harness import BOOT_STEPS, TINY_LEARNER, Proc, install_snapshot, read_all, write_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(bootstrap: str, data_dir: Path, **overrides):
    """Settings on the session broker with a fresh topic prefix; the topics keep months-old records
    (the captures are from 2024: default retention would delete them as they arrive)."""
    from daemon.eventlog.admin import ensure_topics

    kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.")
    s = Settings(data_dir=data_dir, kafka=kafka, http=HttpSettings(port=_free_port()), **overrides)
    asyncio.run(ensure_topics(s, partitions=3, keep_all=True))
    return s


def _summary(out: str) -> dict:
    m = re.search(r"decisions (\d+) \(skipped (\d+)\), groups (\d+), updates (\d+), policy_version (\d+) "
                  r"\(checksum (\w+)\), valid actions ([\d.]+)", out)
    assert m, f"no summary in the output:\n{out[-4000:]}"
    keys = ("decisions", "skipped", "groups", "updates", "policy_version", "checksum", "valid")
    d = dict(zip(keys, m.groups()))
    return {k: (v if k == "checksum" else float(v) if k == "valid" else int(v)) for k, v in d.items()}


@pytest.mark.kafka
def test_two_paced_replays_take_the_same_actions_and_end_on_the_same_weights(kafka_bootstrap, tmp_path,
                                                                             tiny_initial_snapshot):
    runs = []
    for name in ("first", "second"):
        settings = _settings(kafka_bootstrap, tmp_path / name,
                             learner=LearnerSettings(config=TINY_LEARNER, bootstrap_steps=BOOT_STEPS))
        install_snapshot(tiny_initial_snapshot, settings.data_dir)
        proc = Proc(name, ["run", "--span", "15", "--no-sink", "--status-every", "5"],
                    write_config(settings, tmp_path / f"{name}.yaml")).start()
        try:
            proc.wait_for("[run] still serving", 600)
        finally:
            assert proc.stop() == 0, "".join(proc.lines[-40:])
        out = "".join(proc.lines)
        actions = read_all(settings, "agent.actions")
        runs.append((_summary(out), sorted(a.event_id for a in actions), out))
    (first, ids1, out1), (second, ids2, _) = runs
    assert first["decisions"] >= 10 and first["skipped"] == 0
    assert first["groups"] == first["decisions"]  # the end of the input closes the last groups too
    assert len(ids1) == 8 * first["decisions"]
    assert ids1 == ids2  # the same decisions, sampled by the same weights with the same seeds
    assert first == second  # the same counts, and the same final weights (checksum)
    assert "learning curve: " in out1 and Path(re.search(r"learning curve: (\S+)", out1).group(1)).is_file()


@pytest.mark.kafka
def test_the_main_job_on_the_default_replay_skips_nothing_and_says_what_it_learned(kafka_bootstrap, tmp_path):
    # the default configuration throughout (model, bootstrap, replay, sink): only the broker, the
    # topic prefix and the ports are the test's
    settings = _settings(kafka_bootstrap, tmp_path / "data")
    proc = Proc("run", ["run", "--duration", "60", "--status-every", "5"],
                write_config(settings, tmp_path / "run.yaml")).start()
    try:
        proc.wait_for("[run] stopped", 900)
        assert proc.proc.wait(60) == 0  # --duration: it stops itself
    finally:
        proc.stop()
    out = "".join(proc.lines)
    print(out[-6000:])  # the summary, for whoever reads the test log
    summary = _summary(out)
    assert summary["decisions"] >= 10 and summary["skipped"] == 0
    assert summary["valid"] >= 0.95
    assert "paced by the loop" in out and "side probe (last" in out and "learned - random" in out
    assert "restarts=" not in out  # no child, the streams worker included, was restarted
    groups = read_all(settings, "learn.groups")
    actions = read_all(settings, "agent.actions")
    decided = {a.group_id for a in actions}
    assert {g.group_id for g in groups} <= decided
    # each decision's group, the last few still inside their horizons at the stop excepted
    assert len(groups) >= len(decided) - 12
    with_spread = [g for g in groups if max(g.rewards) > min(g.rewards)]
    assert with_spread and all(g.status != "skipped" for g in with_spread)
