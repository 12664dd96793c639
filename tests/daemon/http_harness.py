"""The daemon's HTTP server run in a thread, for tests whose clients block (urllib, the CLI)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

from daemon.service.executors import KillSwitch
from daemon.service.http import HttpServer

TOKEN = "t0ken-for-the-admin-routes"


class Served:
    """An HttpServer on its own event loop in a thread, so blocking clients (urllib, the CLI)
    can call it from the test."""

    def __init__(self, kill: KillSwitch, token: str = TOKEN, extra_routes=()):
        self.snapshots: list[str] = []
        self.pins: list[tuple] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def snapshot() -> str:
            self.snapshots.append("now")
            return "/snap/0000000001-v1"

        async def pin(path: str, blocks: list[int], reason: str) -> dict:
            self.pins.append((path, blocks, reason))
            return {"blocks": blocks, "policy_version": 2, "snapshot": "/snap/x"}

        async def ready() -> dict:
            return {"ok": True}

        async def start() -> int:
            self.server = HttpServer("127.0.0.1", 0, health=lambda: {"ok": True}, ready=ready, kill_switch=kill,
                                     snapshot=snapshot, admin_token=token, status=lambda: {"events": 0}, pin=pin)
            for method, path, handler in extra_routes:
                self.server.app.router.add_route(method, path, handler)
            return await self.server.start()

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def call(self, method: str, path: str, *, token: str | None = None, content_type: str | None = "application/json",
             body: bytes | None = None) -> tuple[int, dict]:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        if body is None and method != "GET":
            body = b"{}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method, data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if resp.headers.get_content_type() == "application/json" else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
