"""Settings validate at start with readable errors; secrets never reach the log output."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from daemon.logging import configure_logging, get_logger, register_settings_secrets
from schemas.settings import SettingsError, load_settings


def test_defaults_load():
    s = load_settings()
    assert s.kafka.topic_prefix == "" and s.reward.latency_ms == 100.0


def test_env_overrides_yaml(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("reward:\n  fee_bps: 1.5\n  latency_ms: 50\nkafka:\n  topic_prefix: prod.\n")
    monkeypatch.setenv("EIGENLOOP_REWARD__FEE_BPS", "2.5")
    s = load_settings(cfg)
    assert s.reward.fee_bps == 2.5  # env wins
    assert s.reward.latency_ms == 50  # yaml fills the rest
    assert s.kafka.topic_prefix == "prod."


@pytest.mark.parametrize("yaml_text,expected", [
    ("reward:\n  fee_bps: -1\n", "reward.fee_bps: Input should be greater than or equal to 0"),
    ("groups:\n  scale_rewards: median\n", "groups.scale_rewards"),
    ("kafka:\n  nonsense: 1\n", "kafka.nonsense: Extra inputs are not permitted"),
    ("analytics:\n  dsn: mysql://x\n", "analytics.dsn"),
    ("reward:\n  min_reward: 5\n  max_reward: 1\n", "min_reward (5.0) must be below max_reward"),
    ("reward: [\n", "not valid YAML"),
])
def test_bad_config_gives_readable_error(tmp_path, yaml_text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(SettingsError) as e:
        load_settings(cfg)
    assert expected in str(e.value)
    assert "Traceback" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_cli_bad_config_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from daemon.cli import app

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("reward:\n  fee_bps: lots\n")
    result = CliRunner().invoke(app, ["--config", str(cfg), "topics", "list"])
    assert result.exit_code == 2
    assert "reward.fee_bps" in result.output and "Traceback" not in result.output


def test_secrets_never_reach_logs(monkeypatch):
    api_key = "AKIA-very-secret-key-123"
    password = "hunter2-sasl-password"
    monkeypatch.setenv("EIGENLOOP_KAFKA__SASL_PASSWORD", password)
    s = load_settings()
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    register_settings_secrets(s)
    log = get_logger("test")
    log.info("connecting", api_key=api_key, sasl_password=s.kafka.sasl_password.get_secret_value())
    log.info(f"retrying with password {password} after failure")
    log.info("config", settings=s.model_dump(mode="python"))
    log.info("nested", exchange={"apiKey": api_key, "name": "binance"})
    logging.getLogger("aiokafka").warning("auth failed for %s", password)
    text = out.getvalue()
    assert password not in text
    assert api_key not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines[0]["api_key"] == "***" and lines[0]["event"] == "connecting"
    assert lines[3]["exchange"] == {"apiKey": "***", "name": "binance"}
    assert "***" in text.splitlines()[-1]  # the stdlib line was scrubbed, not dropped
    structlog.reset_defaults()
