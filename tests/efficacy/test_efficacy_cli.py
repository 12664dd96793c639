"""``eigenloop bench efficacy`` is registered and says what it takes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from daemon.cli import app


def test_bench_efficacy_help_lists_the_options():
    result = CliRunner().invoke(app, ["bench", "efficacy", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--captures", "--fees", "--out", "--quick"):
        assert option in result.output


def test_bad_fees_fail_with_one_line():
    result = CliRunner().invoke(app, ["bench", "efficacy", "--fees", "zero", "--out", "/nonexistent/x"])
    assert result.exit_code != 0
    assert "--fees 'zero'" in result.output


def test_captures_takes_comma_separated_folders_and_defaults_to_both_sets(monkeypatch):
    import daemon.efficacy

    seen = []

    def stop(cfg, out, log):  # the config is what this test is about; the run is not
        seen.append(cfg.captures)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(daemon.efficacy, "run_efficacy", stop)
    result = CliRunner().invoke(app, ["bench", "efficacy", "--captures", "x/a,y/b", "--out", "/nonexistent/x"])
    assert "stopped by the test" in result.output
    CliRunner().invoke(app, ["bench", "efficacy", "--out", "/nonexistent/x"])
    assert seen == [[Path("x/a"), Path("y/b")],
                    [Path("../shared/data/exchange_binance"), Path("../shared/data/exchange_binance_2023-04")]]
