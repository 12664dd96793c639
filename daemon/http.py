"""The daemon's HTTP endpoints: /healthz, /readyz, /metrics, /kill, /snapshot.

- ``/healthz``: the process and its event loop answer, and the model is loaded. Liveness.
- ``/readyz``: additionally the broker answered within the last probe and the learner loop runs.
- ``/metrics``: Prometheus text format.
- ``/kill``: POST engages the kill switch (no new orders from then on), DELETE releases it,
  GET tells its state.
- ``/snapshot``: POST writes a snapshot now and answers with its path (the preStop hook).
- ``/pin``: POST {"snapshot", "blocks", "reason"} restores those blocks from a snapshot.
- ``/status``: the compact counters (events, groups, updates, policy_version, reward) and the
  source streams up and down (``sources``).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class HttpServer:
    def __init__(self, host: str, port: int, *, health: Callable[[], dict[str, Any]],
                 ready: Callable[[], Awaitable[dict[str, Any]]], kill_switch: Any,
                 snapshot: Callable[[], Awaitable[str]], status: Callable[[], dict[str, Any]] | None = None,
                 pin: Callable[[str, list[int], str], Awaitable[dict[str, Any]]] | None = None):
        self.host, self.port = host, port
        self._health, self._ready, self._kill, self._snapshot = health, ready, kill_switch, snapshot
        self._status = status or (lambda: {})
        self._pin = pin
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.add_routes([
            web.get("/healthz", self.healthz), web.get("/readyz", self.readyz), web.get("/metrics", self.metrics),
            web.get("/kill", self.kill_status), web.post("/kill", self.kill), web.delete("/kill", self.release),
            web.post("/snapshot", self.snapshot), web.get("/status", self.status_route),
            web.post("/pin", self.pin),
        ])
        self.app = app

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        return self.port

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    @staticmethod
    def _json(body: dict[str, Any], ok: bool = True) -> web.Response:
        return web.Response(text=json.dumps(body), status=200 if ok else 503, content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        body = self._health()
        return self._json(body, body.get("ok", False))

    async def readyz(self, request: web.Request) -> web.Response:
        body = await self._ready()
        return self._json(body, body.get("ok", False))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def kill_status(self, request: web.Request) -> web.Response:
        return self._json({"engaged": self._kill.engaged, "reason": self._kill.reason})

    async def kill(self, request: web.Request) -> web.Response:
        self._kill.engage("http /kill")
        return self._json({"engaged": True, "reason": self._kill.reason})

    async def release(self, request: web.Request) -> web.Response:
        self._kill.release()
        return self._json({"engaged": False})

    async def status_route(self, request: web.Request) -> web.Response:
        return self._json(self._status())

    async def pin(self, request: web.Request) -> web.Response:
        if self._pin is None:
            return self._json({"error": "pinning is not available"}, ok=False)
        try:
            body = await request.json()
            result = await self._pin(str(body["snapshot"]), [int(b) for b in body["blocks"]],
                                     str(body.get("reason", "operator")))
        except (KeyError, TypeError, ValueError, OSError) as e:
            return web.Response(text=json.dumps({"error": f"{type(e).__name__}: {e}"}), status=400,
                                content_type="application/json")
        return self._json(result)

    async def snapshot(self, request: web.Request) -> web.Response:
        path = await self._snapshot()
        return self._json({"path": path})
