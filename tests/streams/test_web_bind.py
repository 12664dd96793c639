"""The streams worker's Faust web server listens on 127.0.0.1 unless told otherwise (Faust's own
default is every interface)."""

from __future__ import annotations

import asyncio

import pytest

from schemas.settings import Settings, load_settings
from streams.app import create_app


def listening(settings: Settings) -> list[tuple]:
    app = create_app(settings, "127.0.0.1:1", 6)  # no broker is contacted to build or serve the web app

    async def go():
        await app.web.start_server()
        try:
            return list(app.web._runner.addresses)  # where the sockets are bound (faust has no public accessor)
        finally:
            await app.web.stop_server()

    return asyncio.run(go())


def test_the_web_server_binds_loopback_by_default(tmp_path):
    s = Settings(data_dir=tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    assert s.streams.web_bind == "127.0.0.1"
    assert create_app(s, "127.0.0.1:1", 6).conf.web_bind == "127.0.0.1"
    assert [host for host, _ in listening(s)] == ["127.0.0.1"]


def test_the_bind_address_is_configurable_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EIGENLOOP_STREAMS__WEB_BIND", "0.0.0.0")  # what the chart sets in the pod
    s = load_settings(data_dir=tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    assert create_app(s, "127.0.0.1:1", 6).conf.web_bind == "0.0.0.0"
    assert [host for host, _ in listening(s)] == ["0.0.0.0"]


def test_an_empty_bind_address_is_refused():
    with pytest.raises(ValueError, match="web_bind"):
        Settings(streams={"web_bind": ""})
