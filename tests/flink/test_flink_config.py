"""The job's SQL and settings plumbing, without a JVM: what the sources and sinks are told."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from daemon.cli import run as cli_run
from daemon.cli import streams as cli_streams
from daemon.errors import ConfigError
from schemas.settings import KafkaSettings, Settings, StreamsSettings
from streams.flink_job import (checkpoint_options, from_settings, latest_checkpoint, main, restore_path, sink_ddl,
                               source_ddl)
from flink_harness import EIGENLOOP, REPO


def _cfg(**kw):
    s = Settings(kafka=KafkaSettings(topic_prefix="p.", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                     sasl_username="u", sasl_password="pw", ssl_cafile="/ca.pem"))
    return from_settings(s, "broker:9092", **kw)


def test_topics_default_to_the_catalogue_under_the_prefix_and_can_be_overridden():
    cfg = _cfg(topics={"learn.groups": "shadow.groups", "market.events": None})
    assert cfg.topics["market.events"] == "p.market.events" and cfg.topics["learn.groups"] == "shadow.groups"
    assert cfg.group_id == cfg.transactional_prefix == "p.eigenloop-streams-flink"
    assert cfg.lag_config["group.id"] == cfg.group_id and cfg.lag_config["sasl.password"] == "pw"


def test_sources_read_raw_bytes_with_event_time_watermarks():
    ddl = source_ddl("market_in", "p.market.events", _cfg())
    assert "'value.format' = 'raw'" in ddl and "`offset` BIGINT METADATA VIRTUAL" in ddl
    assert "WATERMARK FOR ts AS ts - INTERVAL '1.000' SECOND" in ddl
    assert "JSON_VALUE(CAST(v AS STRING), '$.ts_event')" in ddl
    assert "'properties.sasl.mechanism' = 'SCRAM-SHA-512'" in ddl and "shaded" in ddl
    assert "'properties.ssl.truststore.location' = '/ca.pem'" in ddl
    assert "alignment" not in ddl  # off by default, see the module doc


def test_sinks_are_transactional_with_a_timeout_the_broker_accepts():
    ddl = sink_ddl("groups_out", "p.learn.groups", _cfg())
    assert "'sink.delivery-guarantee' = 'exactly-once'" in ddl
    assert "'sink.transactional-id-prefix' = 'p.eigenloop-streams-flink-p.learn.groups'" in ddl
    assert "'properties.transaction.timeout.ms' = '600000'" in ddl  # broker max is 15 min
    assert "'key.fields' = 'k'" in ddl  # keyed by group id, like the Faust worker's records
    assert "transactional" not in sink_ddl("g", "t", _cfg(delivery="at-least-once"))


def test_latest_checkpoint_is_the_newest_completed_one(tmp_path: Path):
    assert latest_checkpoint(tmp_path) is None
    for job, n in (("a", 3), ("b", 7)):
        (tmp_path / job / f"chk-{n}").mkdir(parents=True)
        (tmp_path / job / f"chk-{n}" / "_metadata").write_bytes(b"x")
    (tmp_path / "b" / "chk-8").mkdir()  # in progress: no _metadata yet
    assert latest_checkpoint(tmp_path) == tmp_path / "b" / "chk-7"


def test_cli_rejects_bad_options_in_one_line():
    for args, message in ((["--topic", "learn.groups"], "expected NAME=TOPIC"),
                          (["--local", "--jobmanager", "http://x:8081"], "exclude each other")):
        proc = subprocess.run([str(EIGENLOOP), "streams", "flink", *args], cwd=REPO, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "EIGENLOOP_KAFKA__BOOTSTRAP": "127.0.0.1:9"}, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_restore_auto_takes_the_latest_checkpoint_or_starts_fresh(tmp_path: Path):
    assert restore_path(_cfg(checkpoint_dir=str(tmp_path), restore="auto")) is None
    with pytest.raises(SystemExit, match="no completed checkpoint"):
        restore_path(_cfg(checkpoint_dir=str(tmp_path), restore="latest"))
    (tmp_path / "j" / "chk-2").mkdir(parents=True)
    (tmp_path / "j" / "chk-2" / "_metadata").write_bytes(b"x")
    for mode in ("auto", "latest"):
        assert restore_path(_cfg(checkpoint_dir=str(tmp_path), restore=mode)) == tmp_path / "j" / "chk-2"
    assert restore_path(_cfg(checkpoint_dir=str(tmp_path), restore="/sp/savepoint-1")) == "/sp/savepoint-1"
    assert restore_path(_cfg(checkpoint_dir=str(tmp_path))) is None


def test_eigenloop_run_supervises_the_flink_job_when_the_engine_is_flink(monkeypatch):
    faust = Settings(streams=StreamsSettings(engine="faust"))
    flink = Settings(streams=StreamsSettings(engine="flink"))
    assert cli_run.streams_command(faust) == ["streams", "worker"]
    monkeypatch.setattr(cli_streams, "flink_python", lambda: "/opt/flink-venv/bin/python")
    assert cli_run.streams_command(flink) == ["streams", "flink", "--local", "--restore", "auto"]
    monkeypatch.setattr(cli_streams, "flink_python", lambda: None)
    with pytest.raises(ConfigError, match="make flink-setup"):
        cli_run.streams_command(flink)
    # `eigenloop run` starts the daemon once the child prints its own ready line
    assert cli_run.streams_ready_line(faust) == "streams worker ready"
    assert cli_run.streams_ready_line(flink) == "flink job submitted"


def test_the_flink_child_finds_the_project_from_any_directory(monkeypatch, tmp_path: Path):
    # the Flink interpreter does not have the project installed: the repository goes on its path
    seen = {}

    def execve(python, argv, env):
        seen.update(python=python, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(cli_streams, "flink_python", lambda: "/opt/flink-venv/bin/python")
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setenv("EIGENLOOP_KAFKA__BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.chdir(tmp_path)
    from typer.testing import CliRunner

    from daemon.cli import app

    result = CliRunner().invoke(app, ["streams", "flink", "--local"])
    assert result.exit_code == 0, result.output
    assert seen["argv"][1:3] == ["-m", "streams.flink_job"]
    assert seen["env"]["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]


def test_the_checkpoint_interval_setting_reaches_the_jobs_configuration():
    assert checkpoint_options(_cfg())["execution.checkpointing.interval"] == "500 ms"  # the default
    s = Settings(streams=StreamsSettings(flink_checkpoint_interval_s=0.3))
    opts = checkpoint_options(from_settings(s, "broker:9092"))
    assert opts["execution.checkpointing.interval"] == "300 ms"
    assert opts["execution.checkpointing.min-pause"] == "150 ms" and opts["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    # the CLI flag wins over the setting
    cfg = from_settings(s, "broker:9092", checkpoint_interval_s=2.0)
    assert checkpoint_options(cfg)["execution.checkpointing.interval"] == "2000 ms"
    # short intervals must not mint a transactional id per checkpoint
    assert "'sink.transaction-naming-strategy' = 'POOLING'" in sink_ddl("g", "t", cfg)


@pytest.mark.parametrize("value", ["0", "-1", "0.01", "301", "soon"])
def test_a_bad_checkpoint_interval_is_refused_at_start_with_the_setting_named(value):
    env = {"PATH": "/usr/bin:/bin", "EIGENLOOP_KAFKA__BOOTSTRAP": "127.0.0.1:9",
           "EIGENLOOP_STREAMS__FLINK_CHECKPOINT_INTERVAL_S": value}
    proc = subprocess.run([str(EIGENLOOP), "streams", "flink", "--local"], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode != 0 and "streams.flink_checkpoint_interval_s" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag", ["0", "0.05", "1000"])
def test_a_bad_checkpoint_interval_flag_is_refused_before_flink_starts(flag, monkeypatch):
    monkeypatch.delenv("EIGENLOOP_CONFIG", raising=False)
    with pytest.raises(SystemExit, match=r"checkpoint interval .* must be between 0.1 and 300.0 s"):
        main(["--local", "--bootstrap", "127.0.0.1:9", "--checkpoint-interval", flag])
