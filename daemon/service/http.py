"""The daemon's HTTP endpoints: /healthz, /readyz, /metrics, /kill, /snapshot.

- ``/healthz``: liveness. 503 naming what fails when the event loop has not turned for
  ``http.liveness_stall_s``, the learner's or the actor's task has ended, or the model has no
  weights (``daemon.service.heartbeat``).
- ``/readyz``: additionally the broker answered within the last probe and the learner loop runs.
- ``/metrics``: Prometheus text format.
- ``/kill``: POST engages the kill switch (no new orders from then on) and answers once the flag
  file is on disk (500 when it cannot be written: orders stop anyway), DELETE releases it, GET
  tells its state.
- ``/snapshot``: POST writes a snapshot now and answers with its path (the preStop hook).
- ``/pin``: POST {"snapshot", "blocks", "reason"} restores those blocks from a snapshot.
- ``/status``: the compact counters (events, groups, updates, policy_version, reward) and the
  source streams up and down (``sources``).

GET routes are open (probes and Prometheus need them). Every other method, on every route present
or future, needs ``Authorization: Bearer <token>`` (401 otherwise) and ``Content-Type:
application/json`` (415 otherwise: a browser's cross-site form can only send form or text types,
so it cannot reach a mutating route even when the port is exposed). The token is
``resolve_admin_token``'s.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.errors import ConfigError

OPEN_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_FILE = "admin-token"


def admin_token_path(settings: Any) -> Path:
    """Where the daemon writes the token it generates (neither admin_token nor its file set)."""
    return Path(settings.data_dir) / TOKEN_FILE


def resolve_admin_token(settings: Any, *, generate: bool = False) -> str:
    """The bearer token of the mutating routes: ``http.admin_token``; else the content of
    ``http.admin_token_file``; else ``<data_dir>/admin-token``, which the daemon (``generate``)
    writes afresh at each start (mode 0600) and the CLI reads. Raises ConfigError when there is
    none to read."""
    http = settings.http
    if http.admin_token is not None:
        return http.admin_token.get_secret_value().strip()
    path = Path(http.admin_token_file) if http.admin_token_file is not None else admin_token_path(settings)
    if generate and http.admin_token_file is None:
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
        return token
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"no admin token: cannot read {path} ({e.strerror}); the daemon writes it when it "
                          "starts, or set http.admin_token / http.admin_token_file") from None
    if len(token) < 16:
        raise ConfigError(f"admin token file {path} holds fewer than 16 characters")
    return token


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps({"error": message}), status=status, content_type="application/json",
                        headers=headers)


class HttpServer:
    def __init__(self, host: str, port: int, *, health: Callable[[], dict[str, Any]],
                 ready: Callable[[], Awaitable[dict[str, Any]]], kill_switch: Any,
                 snapshot: Callable[[], Awaitable[str]], admin_token: str,
                 status: Callable[[], dict[str, Any]] | None = None,
                 pin: Callable[[str, list[int], str], Awaitable[dict[str, Any]]] | None = None):
        if len(admin_token or "") < 16:
            raise ValueError("HttpServer needs an admin token of at least 16 characters")
        self.host, self.port = host, port
        self._token = admin_token.encode()
        self._health, self._ready, self._kill, self._snapshot = health, ready, kill_switch, snapshot
        self._status = status or (lambda: {})
        self._pin = pin
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._admin_only])
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

    @web.middleware
    async def _admin_only(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.method in OPEN_METHODS:
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
            return _error(401, "this route needs Authorization: Bearer <admin token>", {"WWW-Authenticate": "Bearer"})
        if request.content_type != "application/json":
            return _error(415, "this route needs Content-Type: application/json")
        return await handler(request)

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
        try:
            # fsync can take a while on a network volume: not on the event loop
            await asyncio.to_thread(self._kill.engage, "http /kill")
        except OSError as e:
            return web.Response(text=json.dumps({"engaged": True, "persisted": False, "error": str(e)}), status=500,
                                content_type="application/json")
        return self._json({"engaged": True, "persisted": True, "reason": self._kill.reason})

    async def release(self, request: web.Request) -> web.Response:
        try:
            await asyncio.to_thread(self._kill.release)
        except OSError as e:
            return web.Response(text=json.dumps({"engaged": True, "error": f"flag file not removed: {e}"}),
                                status=500, content_type="application/json")
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
