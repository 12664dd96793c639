"""The sink's read-only query server and the client the CLI uses to reach it.

Bound to 127.0.0.1 on a free port; every request must carry the token from the 0600 state
file, so only the user who can read the data dir can query. Queries run with ClickHouse's
``readonly=1`` after a check that the text is one read-only statement (``readonly_sql``): a
reader can never change what the sink owns nor write a file. The token is compared in constant
time and a body is read only up to ``MAX_BODY_BYTES`` (413 beyond), so whoever can reach the
port cannot guess the token byte by byte nor make the sink buffer gigabytes. The socket is
bound before the engine opens; a query that arrives early waits in the listen backlog until
``start``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import http.client
import json
import os
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Sequence

from daemon.ops.analytics.store import AnalyticsError, ClickHouseStore, Result

TOKEN_HEADER = "X-Eigenloop-Token"
CLIENT_TIMEOUT_S = 120.0
# a query and its parameters; the reports' longest SQL is a few KiB
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SinkState:
    """How to reach a running sink's query server, as its state file publishes it
    (``daemon.ops.analytics.access``)."""

    pid: int
    port: int
    token: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True


def _jsonable(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (uuid.UUID, IPv4Address, IPv6Address)):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def _revive(value: Any, ch_type: str) -> Any:
    """Undo the JSON flattening for the types reports compute with (times)."""
    if value is None:
        return None
    inner = ch_type.removeprefix("Nullable(").removeprefix("LowCardinality(")
    if inner.startswith("DateTime"):
        return dt.datetime.fromisoformat(value)
    if inner.startswith("Date"):
        return dt.date.fromisoformat(value)
    return value


class QueryServer:
    def __init__(self, token: str, database: str, max_body_bytes: int = MAX_BODY_BYTES):
        self.token = token
        self.database = database
        self.max_body_bytes = max_body_bytes
        self._store: ClickHouseStore | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return  # request lines would drown the sink's structured log

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                if not hmac.compare_digest(self.headers.get(TOKEN_HEADER, "").encode(), server.token.encode()):
                    self._reply(403, {"error": "bad token"})
                    return
                try:
                    length = int(self.headers["Content-Length"])
                except (KeyError, TypeError, ValueError):
                    self._reply(411, {"error": "a Content-Length is required"})
                    return
                if length < 0 or length > server.max_body_bytes:
                    # the body stays unread: drop the connection rather than drain it
                    self.close_connection = True
                    self._reply(413, {"error": f"request body over {server.max_body_bytes} bytes"})
                    return
                try:
                    body = json.loads(self.rfile.read(length))
                    sql = str(body["sql"])
                except (ValueError, KeyError, TypeError) as e:
                    self._reply(400, {"error": f"bad request: {e}"})
                    return
                status, payload = server.run_query(sql, body.get("parameters"))
                self._reply(status, payload)

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self, store: ClickHouseStore) -> None:
        self._store = store
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="analytics-query")
        self._thread.start()

    def run_query(self, sql: str, parameters: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        assert self._store is not None
        try:
            # one engine handle serves all readers; its session state is not thread-safe
            with self._lock:
                r = self._store.query(sql, parameters, readonly=True)
        except AnalyticsError as e:
            return 400, {"error": str(e)}
        return 200, {"columns": r.columns, "types": r.types, "rows": _jsonable(r.rows)}

    def shutdown(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._store is not None:
            self._store.close()


class RemoteStore:
    """Read-only ``Store`` over the sink's query server."""

    def __init__(self, state: SinkState, database: str):
        self.state = state
        self.database = database
        self.where = f"the running sink (pid {state.pid}, 127.0.0.1:{state.port})"

    def query(self, sql: str, parameters: dict[str, Any] | None = None, *, readonly: bool = True) -> Result:
        body = json.dumps({"sql": sql, "parameters": parameters}).encode()
        if len(body) > MAX_BODY_BYTES:
            # said here: the server drops the connection without reading, which reads as a reset
            raise AnalyticsError(f"query too large for {self.where}: {len(body)} bytes, at most {MAX_BODY_BYTES}")
        conn = http.client.HTTPConnection("127.0.0.1", self.state.port, timeout=CLIENT_TIMEOUT_S)
        try:
            conn.request("POST", "/query", body, {TOKEN_HEADER: self.state.token, "Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise AnalyticsError(f"cannot reach {self.where}: {e}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise AnalyticsError(payload.get("error", f"HTTP {resp.status}"))
        types = payload["types"]
        rows = [tuple(_revive(v, t) for v, t in zip(row, types)) for row in payload["rows"]]
        return Result(payload["columns"], types, rows)

    def command(self, sql: str) -> None:
        raise AnalyticsError(f"read-only: {self.where} owns the chdb path; stop it to change the schema")

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        self.command("")

    def close(self) -> None:
        return None
