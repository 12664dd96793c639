"""``eigenloop bench efficacy`` is registered and says what it takes."""

from __future__ import annotations

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
