"""The daemon's HTTP surface: reads stay open, every non-GET route needs the bearer token and a
JSON body type, and the token the daemon generates is the one its CLI sends."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request

import pytest
from aiohttp import web
from typer.testing import CliRunner

from daemon.errors import ConfigError
from daemon.service.executors import KillSwitch
from daemon.service.http import HttpServer, admin_token_path, resolve_admin_token
from schemas.settings import Settings, SettingsError, load_settings
from tests.daemon.http_harness import TOKEN, Served

@pytest.fixture
def served(tmp_path):
    kill = KillSwitch(tmp_path / "KILL")

    async def future_route(request: web.Request) -> web.Response:
        return web.json_response({"reached": True})

    s = Served(kill, extra_routes=[("PUT", "/future", future_route)])
    s.kill = kill
    yield s
    s.close()


MUTATING = [("POST", "/kill"), ("DELETE", "/kill"), ("POST", "/snapshot"), ("POST", "/pin"), ("PUT", "/future")]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/status", "/kill"])
def test_reads_stay_open(served, path):
    status, _ = served.call("GET", path)
    assert status == 200


@pytest.mark.parametrize("method,path", MUTATING)
@pytest.mark.parametrize("token", [None, "", "wrong-token-of-some-length", TOKEN + "x", TOKEN[:-1]])
def test_mutating_routes_need_the_token(served, method, path, token):
    status, body = served.call(method, path, token=token)
    assert status == 401, body
    assert not served.kill.engaged and not (served.kill.flag_file.exists())
    assert served.snapshots == [] and served.pins == []


def test_other_auth_schemes_are_refused(served):
    for header in (f"Basic {TOKEN}", TOKEN, f"Token {TOKEN}"):
        req = urllib.request.Request(f"http://127.0.0.1:{served.port}/kill", method="POST", data=b"{}",
                                     headers={"Authorization": header, "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401 and e.value.headers["WWW-Authenticate"] == "Bearer"
    assert not served.kill.engaged


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("method,path", MUTATING)
def test_mutating_routes_need_a_json_body_type(served, method, path, content_type):
    # what a browser's cross-site form can send: refused even with the token
    status, _ = served.call(method, path, token=TOKEN, content_type=content_type, body=b"x=1")
    assert status == 415
    assert not served.kill.engaged and served.snapshots == [] and served.pins == []


def test_with_the_token_the_routes_work(served):
    assert served.call("POST", "/kill", token=TOKEN) == (200, {"engaged": True, "persisted": True,
                                                               "reason": "http /kill"})
    assert served.kill.engaged
    assert served.call("DELETE", "/kill", token=TOKEN) == (200, {"engaged": False})
    assert not served.kill.engaged
    assert served.call("POST", "/snapshot", token=TOKEN)[1] == {"path": "/snap/0000000001-v1"}
    status, body = served.call("POST", "/pin", token=TOKEN,
                               body=json.dumps({"snapshot": "/snap/a", "blocks": [1], "reason": "r"}).encode())
    assert status == 200 and served.pins == [("/snap/a", [1], "r")]
    assert served.call("PUT", "/future", token=TOKEN) == (200, {"reached": True})
    assert served.call("POST", "/kill", token=TOKEN, content_type="application/json; charset=utf-8")[0] == 200


@pytest.mark.parametrize("token", [None, "", "short"])
def test_the_server_refuses_to_run_without_a_real_token(token):
    with pytest.raises((ValueError, TypeError)):
        HttpServer("127.0.0.1", 0, health=dict, ready=None, kill_switch=None, snapshot=None, admin_token=token)


def test_generated_token_is_private_fresh_and_what_the_cli_reads(tmp_path):
    s = Settings(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="admin-token"):
        resolve_admin_token(s)  # the CLI before any daemon started
    first = resolve_admin_token(s, generate=True)
    path = admin_token_path(s)
    assert path == tmp_path / "admin-token" and path.read_text().strip() == first and len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_admin_token(s) == first
    second = resolve_admin_token(s, generate=True)  # each start: a new one
    assert second != first and resolve_admin_token(s) == second


def test_configured_token_and_token_file_win(tmp_path):
    s = Settings(data_dir=tmp_path, http={"admin_token": "x" * 20})
    assert resolve_admin_token(s, generate=True) == "x" * 20 and not admin_token_path(s).exists()
    mounted = tmp_path / "secret" / "token"
    mounted.parent.mkdir()
    mounted.write_text("from-a-mounted-secret-0123\n")
    s = Settings(data_dir=tmp_path, http={"admin_token_file": mounted})
    assert resolve_admin_token(s, generate=True) == "from-a-mounted-secret-0123"
    assert mounted.read_text() == "from-a-mounted-secret-0123\n" and not admin_token_path(s).exists()
    mounted.write_text("short\n")
    with pytest.raises(ConfigError, match="fewer than 16"):
        resolve_admin_token(s)


def test_settings_validation_is_clear_and_does_not_echo_the_token():
    with pytest.raises(SettingsError) as e:
        load_settings(http={"admin_token": "hunter2"})
    assert "at least 16 characters" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(SettingsError, match="not both"):
        load_settings(http={"admin_token": "y" * 20, "admin_token_file": "/run/token"})


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("EIGENLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EIGENLOOP_DATA_DIR", str(tmp_path))
    return tmp_path


def test_cli_calls_the_daemon_with_the_token_it_generated(cli_env, monkeypatch):
    from daemon.cli import app

    settings = Settings(data_dir=cli_env)
    kill = KillSwitch(cli_env / "KILL")
    served = Served(kill, token=resolve_admin_token(settings, generate=True))
    try:
        monkeypatch.setenv("EIGENLOOP_HTTP__PORT", str(served.port))
        runner = CliRunner()
        out = runner.invoke(app, ["snapshot", "now"])
        assert out.exit_code == 0, out.output
        assert "snapshot written: /snap/0000000001-v1" in out.output and served.snapshots == ["now"]
        out = runner.invoke(app, ["kill-switch", "on"])
        assert out.exit_code == 0 and "daemon told" in out.output, out.output
        out = runner.invoke(app, ["kill-switch", "off"])
        assert out.exit_code == 0 and not kill.engaged, out.output
        # a token the daemon does not know (an old file): the CLI says so, and the flag still stops orders
        admin_token_path(settings).write_text("stale-token-from-a-previous-start\n")
        out = runner.invoke(app, ["kill-switch", "on"])
        assert out.exit_code == 0 and "HTTP 401" in out.output and kill.engaged, out.output
        out = runner.invoke(app, ["kill-switch", "off"])
        assert out.exit_code != 0 and "stays engaged" in out.output and kill.engaged, out.output
        assert (cli_env / "KILL").exists()
    finally:
        served.close()
