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


def _configs_for(monkeypatch, args: list[str]) -> list:
    """The EfficacyConfig each invocation would run with (the benchmark itself is stubbed out)."""
    import daemon.tools.efficacy

    seen = []

    def fake_run(cfg, out, log=None):
        seen.append(cfg)
        return {"fees": {}}

    monkeypatch.setattr(daemon.tools.efficacy, "run_efficacy", fake_run)
    result = CliRunner().invoke(app, ["bench", "efficacy", "--out", "/nonexistent/x", *args])
    assert result.exit_code == 0, result.output
    return seen


def test_captures_takes_comma_separated_folders_and_defaults_to_both_sets(monkeypatch):
    (cfg,) = _configs_for(monkeypatch, ["--captures", "x/a,y/b"])
    assert cfg.captures == [Path("x/a"), Path("y/b")]
    (cfg,) = _configs_for(monkeypatch, [])
    assert cfg.captures == [Path("../shared/data/exchange_binance"), Path("../shared/data/exchange_binance_2023-04")]


def test_seeds_option_sets_the_runs_seeds(monkeypatch):
    assert "--seeds" in CliRunner().invoke(app, ["bench", "efficacy", "--help"]).output
    (cfg,) = _configs_for(monkeypatch, ["--seeds", "0,1,2"])
    assert cfg.seeds == [0, 1, 2]
    (cfg,) = _configs_for(monkeypatch, [])
    assert cfg.seeds == [0, 1, 2]  # the default: three learner seeds
    (cfg,) = _configs_for(monkeypatch, ["--quick"])
    assert cfg.seeds == [0]  # a wiring check needs one
    (cfg,) = _configs_for(monkeypatch, ["--quick", "--seeds", "3,5"])
    assert cfg.seeds == [3, 5]


def test_bad_seeds_fail_with_one_line():
    for bad, says in (("0,x", "--seeds '0,x'"), ("1,1", "seeds=[1, 1]"), (",", "seeds=[]")):
        result = CliRunner().invoke(app, ["bench", "efficacy", "--seeds", bad, "--out", "/nonexistent/x"])
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], result.output
