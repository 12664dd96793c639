"""Settings that must not pass silently: unbounded live limits, misspelt environment variables,
analytics queries without limits."""

from __future__ import annotations

import pytest

from schemas.settings import AnalyticsSettings, SettingsError, load_settings, unknown_env_warnings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # the suite's own EIGENLOOP_* (the broker address) are known; anything else would add lines
    import os

    for name in [k for k in os.environ if k.upper().startswith("EIGENLOOP_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("field", ["max_notional", "max_position"])
@pytest.mark.parametrize("value", ["inf", "Infinity", "-inf", "nan"])
def test_live_mode_needs_finite_limits(monkeypatch, field, value):
    monkeypatch.setenv("EIGENLOOP_EXECUTOR__MODE", "live")
    monkeypatch.setenv(f"EIGENLOOP_EXECUTOR__{field.upper()}", value)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "executor" in str(e.value)
    if value in ("inf", "Infinity"):  # the others already fail ge=0
        assert f"live mode needs a finite {field}" in str(e.value)


def test_live_mode_limits_from_yaml(tmp_path):
    cfg = tmp_path / "live.yaml"
    cfg.write_text("executor:\n  mode: live\n  max_notional: .inf\n")
    with pytest.raises(SettingsError, match="live mode needs a finite max_notional"):
        load_settings(cfg)


def test_paper_mode_may_stay_unbounded(monkeypatch):
    monkeypatch.setenv("EIGENLOOP_EXECUTOR__MAX_NOTIONAL", "inf")
    assert load_settings().executor.max_notional == float("inf")
    monkeypatch.setenv("EIGENLOOP_EXECUTOR__MODE", "live")
    monkeypatch.setenv("EIGENLOOP_EXECUTOR__MAX_NOTIONAL", "250")
    s = load_settings()
    assert s.executor.mode == "live" and s.executor.max_notional == 250


def test_misspelt_top_level_variable_is_reported_with_a_suggestion():
    lines = unknown_env_warnings({"EIGENLOOP_EXECUTR__MODE": "live", "EIGENLOOP_KAFKA_TOPIC_PREFIX": "p.",
                                  "EIGENLOOP_ZQXWV": "1", "PATH": "/bin"})
    assert lines == [
        "warning: environment variable EIGENLOOP_EXECUTR__MODE is not a setting and is ignored; "
        "did you mean EIGENLOOP_EXECUTOR__MODE?",
        "warning: environment variable EIGENLOOP_KAFKA_TOPIC_PREFIX is not a setting and is ignored; "
        "did you mean EIGENLOOP_KAFKA__TOPIC_PREFIX?",
        "warning: environment variable EIGENLOOP_ZQXWV is not a setting and is ignored",
    ]


def test_known_variables_are_not_reported():
    env = {name: "x" for name in (
        "EIGENLOOP_CONFIG", "EIGENLOOP_DATA_DIR", "EIGENLOOP_LOG_LEVEL", "EIGENLOOP_KAFKA__BOOTSTRAP",
        "EIGENLOOP_KAFKA__REPLICATION__LEARNING__FACTOR", "EIGENLOOP_KAFKA_BOOTSTRAP", "EIGENLOOP_FLINK_PYTHON",
        "EIGENLOOP_SHARED_DATA", "EIGENLOOP_TEST_DATA_DIR", "EIGENLOOP_VENV_BIN", "EIGENLOOP_FAULTS_KILLS",
        "EIGENLOOP_EXCHANGE_BINANCE_API_KEY", "EIGENLOOP_EXCHANGE_OKX_SECRET", "EIGENLOOP_ANALYTICS__PASSWORD")}
    assert unknown_env_warnings(env) == []


def test_cli_warns_at_start_and_carries_on(monkeypatch):
    from typer.testing import CliRunner

    from daemon.cli import app

    monkeypatch.setenv("EIGENLOOP_EXECUTR__MODE", "live")
    result = CliRunner().invoke(app, ["topics", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert ("warning: environment variable EIGENLOOP_EXECUTR__MODE is not a setting and is ignored; "
            "did you mean EIGENLOOP_EXECUTOR__MODE?") in result.stderr
    assert "EXECUTR" not in result.stdout
    assert '"name": "learn.groups"' in result.stdout


def test_analytics_query_limits_have_sane_defaults():
    a = AnalyticsSettings()
    assert a.query_timeout_s == 30 and a.query_max_memory_bytes == 2 * 1024**3
    with pytest.raises(ValueError):
        AnalyticsSettings(query_timeout_s=0)
