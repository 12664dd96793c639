"""The kill switch: one flag-file path for the daemon, its HTTP route and the CLI; persisted
durably before /kill answers; failing closed when the flag cannot be written or read."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.service.executors import KillSwitch, PaperExecutor, kill_switch_path
from daemon.service.runtime import Daemon
from schemas import Action, MarketActionSpec
from schemas.settings import ExecutorSettings, Settings
from tests.daemon.http_harness import TOKEN, Served

REPO = Path(__file__).resolve().parents[2]
QUOTE = (1_700_000_000_000_000_000, 100.0, 1.0, 100.1, 1.0)


def order(i: int) -> Action:
    return Action(group_id=f"g{i}", candidate_index=0, group_size=1, policy_version=0, seed=0, prompt_id="p",
                  symbol="BTC/USDT", prompt="M", completion="long 0.5 h5",
                  parsed=MarketActionSpec(side="long", size=0.5, horizon_s=5.0))


def fills(kill: KillSwitch) -> int:
    ex = PaperExecutor(ExecutorSettings(max_notional=100.0, max_position=1e9, max_orders_per_minute=10_000), kill)
    return sum(asyncio.run(ex.execute(order(i), QUOTE)) is not None for i in range(3))


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("EIGENLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EIGENLOOP_HTTP__PORT", "9")  # nothing listens: the CLI works on the flag alone


def test_one_path_default_and_configured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = Settings(data_dir=tmp_path / "data")
    assert kill_switch_path(default) == tmp_path / "data" / "KILL"
    assert Daemon(default).kill.flag_file == kill_switch_path(default)
    custom = Settings(data_dir=tmp_path / "data", executor={"kill_switch_file": "flags/STOP"})
    assert kill_switch_path(custom) == tmp_path / "flags" / "STOP"  # absolute: the same from any cwd
    assert Daemon(custom).kill.flag_file == kill_switch_path(custom)


def test_cli_and_daemon_agree_on_a_custom_flag_file(tmp_path, clean_env, monkeypatch):
    from daemon.cli import app

    flag = tmp_path / "elsewhere" / "STOP"
    monkeypatch.setenv("EIGENLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EIGENLOOP_EXECUTOR__KILL_SWITCH_FILE", str(flag))
    daemon = Daemon(Settings())
    assert fills(daemon.kill) == 3
    out = CliRunner().invoke(app, ["kill-switch", "on"])
    assert out.exit_code == 0, out.output
    assert flag.exists() and not (tmp_path / "data" / "KILL").exists()
    assert daemon.kill.engaged and fills(daemon.kill) == 0
    out = CliRunner().invoke(app, ["kill-switch", "status"])
    assert f"flag file {flag} present" in out.output
    out = CliRunner().invoke(app, ["kill-switch", "off"])
    assert out.exit_code == 0 and not flag.exists(), out.output
    assert fills(Daemon(Settings()).kill) == 3  # a restarted daemon trades again


def test_http_kill_persists_before_answering_and_survives_a_restart(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    flag = tmp_path / "data" / "KILL"
    served = Served(KillSwitch(flag))
    try:
        status, body = served.call("POST", "/kill", token=TOKEN)
        assert (status, body["persisted"]) == (200, True)
        assert flag.exists()  # on disk when the answer came
        assert synced == ["file", "dir"]
    finally:
        served.close()
    restarted = KillSwitch(flag)
    assert restarted.engaged and "flag file" in restarted.reason and fills(restarted) == 0


def test_http_kill_that_cannot_persist_answers_500_but_stops_orders(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    kill = KillSwitch(blocker / "KILL")  # its directory cannot exist
    served = Served(kill)
    try:
        status, body = served.call("POST", "/kill", token=TOKEN)
    finally:
        served.close()
    assert status == 500 and body["engaged"] is True and body["persisted"] is False
    assert kill.engaged and fills(kill) == 0


def test_cli_that_cannot_write_the_flag_fails_but_still_stops_the_daemon(tmp_path, clean_env, monkeypatch):
    from daemon.cli import app
    from daemon.service.http import resolve_admin_token

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("EIGENLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EIGENLOOP_EXECUTOR__KILL_SWITCH_FILE", str(blocker / "KILL"))
    out = CliRunner().invoke(app, ["kill-switch", "on"])
    assert out.exit_code != 0 and "could not write the flag file" in out.output
    kill = KillSwitch(tmp_path / "data" / "KILL")  # a daemon whose own flag is writable
    served = Served(kill, token=resolve_admin_token(Settings(data_dir=tmp_path / "data"), generate=True))
    try:
        monkeypatch.setenv("EIGENLOOP_HTTP__PORT", str(served.port))
        out = CliRunner().invoke(app, ["kill-switch", "on"])
    finally:
        served.close()
    assert out.exit_code != 0 and "stopped its orders" in out.output, out.output
    assert kill.engaged


def test_an_unreadable_flag_counts_as_engaged(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    kill = KillSwitch(blocker / "KILL")  # stat fails with ENOTDIR, not "no such file"
    assert kill.engaged and "unreadable" in kill.reason and fills(kill) == 0
    blocker.unlink()
    assert not kill.engaged and kill.reason == "" and fills(kill) == 3  # readable (absent) again: trades


def test_release_that_cannot_remove_the_flag_stays_engaged(tmp_path, monkeypatch):
    flag = tmp_path / "KILL"
    kill = KillSwitch(flag)
    kill.engage("test")

    def unlink(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", unlink)
    served = Served(kill)
    try:
        status, body = served.call("DELETE", "/kill", token=TOKEN)
    finally:
        served.close()
    assert status == 500 and body["engaged"] is True and kill.engaged and fills(kill) == 0


def test_no_runbook_says_the_kill_switch_stops_learning():
    # it stops orders (and posts); sources, sampling, scoring and learning go on
    wrong = re.compile(r"kill switch[^.]*\bstops? (actions|groups|updates|learning)|"
                       r"stops actions, hence groups", re.I | re.S)
    for path in sorted((REPO / "runbooks").glob("*.md")):
        for para in path.read_text().split("\n\n"):
            assert not wrong.search(para), f"{path.name}: {para.strip()[:200]}"
