"""The small interface every analytics component talks to, and its ClickHouse implementation.

``ClickHouseStore`` wraps a clickhouse-connect client. clickhouse-connect 1.x drives chdb
itself (``interface="chdb"``), so the embedded engine and a server go through the same code;
only ``open_store`` knows which. Errors leave this module as ``AnalyticsError`` with one line a
person can act on (bad SQL, missing table, unreachable server), never a driver traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence
from urllib.parse import urlparse

from daemon.errors import EigenloopError
from daemon.ops.analytics.readonly_sql import UnsafeQuery, check_read_only
from schemas.settings import AnalyticsSettings, Settings

DEFAULT_DB = "eigenloop"
DEFAULT_DSN = AnalyticsSettings.model_fields["dsn"].default


class AnalyticsError(EigenloopError):
    """One line describing why an analytics operation failed."""


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


class Store(Protocol):
    database: str

    def command(self, sql: str) -> None: ...

    def query(self, sql: str, parameters: dict[str, Any] | None = None, *, readonly: bool = False) -> Result: ...

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """Where the analytics data lives: an embedded chdb path or a server URL."""

    kind: str  # "chdb" | "server"
    database: str
    path: Path | None = None
    url: str | None = None

    def describe(self) -> str:
        return f"chdb at {self.path}" if self.kind == "chdb" else f"ClickHouse at {self.url}"


def resolve_target(settings: Settings) -> Target:
    """The DSN as a Target.

    Relative chdb paths: the default DSN (``chdb://.eigenloop/chdb``) means ``<data_dir>/chdb``,
    so a deployment that moves its data dir moves its analytics with it; any other relative
    path is taken relative to the working directory, as written.
    """
    dsn = settings.analytics.dsn
    if dsn.startswith("chdb://"):
        raw = dsn[len("chdb://"):].split("?", 1)[0]
        path = settings.data_dir / "chdb" if dsn == DEFAULT_DSN else Path(raw)
        return Target("chdb", DEFAULT_DB, path=path.resolve())
    parsed = urlparse(dsn)
    database = parsed.path.strip("/") or DEFAULT_DB
    scheme = "https" if parsed.scheme == "https" else "http"
    port = parsed.port or (8443 if scheme == "https" else 8123)
    return Target("server", database, url=f"{scheme}://{parsed.hostname or 'localhost'}:{port}")


_CODE = re.compile(r"Code: (\d+)\. DB::Exception: (.*)")
_KINDS = {62: "bad SQL", 60: "missing table", 81: "missing database", 47: "unknown column",
          46: "unknown function", 164: "read-only access", 159: "query timed out", 241: "out of memory"}
# the settings clause ClickHouseStore.query appends, echoed back in syntax errors
_OUR_SETTINGS = re.compile(r" SETTINGS (?:(?:max_execution_time|max_memory_usage|readonly) = '[^']*'(?:, )?)+")


def describe_error(exc: BaseException) -> str:
    """One line out of a clickhouse-connect / chdb exception."""
    text = " ".join(str(exc).split())
    m = _CODE.search(text)
    if m:
        code = int(m.group(1))
        detail = m.group(2)
        # the driver appends the wire format and a long "Expected one of" list: noise to a person
        detail = re.split(r" FORMAT Native| Expected one of| \(version ", detail)[0].rstrip(". ")
        detail = _OUR_SETTINGS.sub("", detail)
        kind = _KINDS.get(code, f"ClickHouse error {code}")
        return f"{kind}: {detail[:300]}"
    return text[:300] or type(exc).__name__


def query_limits(a: AnalyticsSettings) -> dict[str, int]:
    """ClickHouse settings bounding every query: a runaway report fails alone, it does not take
    the sink's engine (and its memory) down with it."""
    return {"max_execution_time": a.query_timeout_s, "max_memory_usage": a.query_max_memory_bytes}


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def describe_cause(exc: BaseException) -> str:
    """The root cause of a connection failure ("Connection refused"), not urllib3's retry story."""
    m = _ERRNO.search(str(exc))
    return m.group(1).strip() if m else describe_error(exc)


def quiet_driver_logs() -> None:
    """urllib3 and the driver log each failed attempt; the CLI reports the outcome once."""
    import logging

    import clickhouse_connect.driver.httputil  # noqa: F401 - it sets urllib3's level on import; go after it

    for name in ("urllib3", "clickhouse_connect"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class ClickHouseStore:
    """A clickhouse-connect client (chdb or HTTP) behind the ``Store`` interface."""

    def __init__(self, client: Any, database: str, where: str, limits: dict[str, int] | None = None):
        self._client = client
        self.database = database
        self.where = where
        self.limits = query_limits(AnalyticsSettings()) if limits is None else limits

    def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

        try:
            return fn(*args, **kw)
        except OperationalError as e:
            raise AnalyticsError(f"cannot reach {self.where}: {describe_cause(e)}") from None
        except ClickHouseError as e:
            raise AnalyticsError(describe_error(e)) from None

    def command(self, sql: str) -> None:
        self._run(self._client.command, sql)

    def query(self, sql: str, parameters: dict[str, Any] | None = None, *, readonly: bool = False) -> Result:
        settings: dict[str, int] = dict(self.limits)
        if readonly:
            try:
                sql = check_read_only(sql)
            except UnsafeQuery as e:
                raise AnalyticsError(f"{e.kind}: {e}") from None
            # readonly=1 also stops the query's own SETTINGS clause from lifting the limits. Last,
            # for an engine that applies settings in order (it forbids changing the rest).
            settings["readonly"] = 1
        r = self._run(self._client.query, sql, parameters=parameters, settings=settings)
        return Result(list(r.column_names), [t.name for t in r.column_types], list(r.result_rows))

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        if rows:
            self._run(self._client.insert, table, rows, column_names=list(columns))

    def close(self) -> None:
        self._client.close()


def open_chdb(path: Path, database: str = DEFAULT_DB, limits: dict[str, int] | None = None) -> ClickHouseStore:
    """Open the embedded engine. Callers hold the path lock (``daemon.ops.analytics.access``).
    ``limits``: ``query_limits`` of the settings (None: the defaults)."""
    import clickhouse_connect

    path.mkdir(parents=True, exist_ok=True)
    try:
        client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    except Exception as e:  # the driver raises several types for an engine that will not open
        raise AnalyticsError(f"cannot open chdb at {path}: {describe_error(e)}") from None
    return ClickHouseStore(client, database, f"chdb at {path}", limits)


def open_server(target: Target, settings: Settings) -> ClickHouseStore:
    import clickhouse_connect

    a = settings.analytics
    parsed = urlparse(target.url or "")
    try:
        client = clickhouse_connect.get_client(
            host=parsed.hostname, port=parsed.port, interface=parsed.scheme, username=a.username or "default",
            password=a.password.get_secret_value() if a.password else "", connect_timeout=5, send_receive_timeout=60)
    except Exception as e:  # connection refused, DNS, TLS, auth: all mean "cannot use the server"
        raise AnalyticsError(f"cannot reach ClickHouse at {target.url}: {describe_cause(e)}") from None
    return ClickHouseStore(client, target.database, f"ClickHouse at {target.url}", query_limits(a))
