"""Each failure is one ``error:`` line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.settings import AnalyticsSettings, Settings

from .helpers import run_cli


def _one_error_line(r) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def chdb_settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path)
    assert run_cli(s, "analytics", "migrate").returncode == 0
    return s


def test_bad_sql(chdb_settings: Settings):
    line = _one_error_line(run_cli(chdb_settings, "analytics", "--sql", "SELEC 1"))
    assert line.startswith("error: bad SQL: Syntax error")


def test_missing_table(chdb_settings: Settings):
    line = _one_error_line(run_cli(chdb_settings, "analytics", "sql", "SELECT * FROM eigenloop.nope"))
    assert line.startswith("error: missing table:") and "eigenloop.nope" in line


def test_report_before_migrations(tmp_path: Path):
    line = _one_error_line(run_cli(Settings(data_dir=tmp_path / "fresh"), "analytics", "blocks"))
    assert "missing" in line


def test_unreachable_server(tmp_path: Path):
    s = Settings(data_dir=tmp_path, analytics=AnalyticsSettings(dsn="http://127.0.0.1:9"))
    for args in (("analytics", "lag"), ("analytics", "migrate"), ("analytics", "--sql", "SELECT 1")):
        line = _one_error_line(run_cli(s, *args))
        assert line == "error: cannot reach ClickHouse at http://127.0.0.1:9: Connection refused", line


def test_unwritable_plot(chdb_settings: Settings, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _one_error_line(run_cli(chdb_settings, "analytics", "groups", "--plot", str(blocker / "x.png")))
    assert "cannot write" in line
