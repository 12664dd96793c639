"""Ad hoc analytics SQL is one read-only statement, bounded in time and memory; the sink's
query server compares its token in constant time and refuses oversized bodies.

No Kafka: the embedded engine in a temporary directory (chdb allows one path per process, so
the whole module shares one store).
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest

from daemon.ops.analytics.readonly_sql import MalformedQuery, UnsafeQuery, check_read_only
from daemon.ops.analytics.server import MAX_BODY_BYTES, TOKEN_HEADER, QueryServer
from daemon.ops.analytics.store import AnalyticsError, ClickHouseStore, open_chdb, query_limits
from schemas.settings import AnalyticsSettings

TOKEN = "t0ken-for-the-test"


# --- the statement check alone ----------------------------------------------------------------

ACCEPTED = [
    ("SELECT 1", "SELECT 1"),
    ("select 1;", "select 1"),
    ("SELECT 1 ;; -- done", "SELECT 1"),
    ("  (SELECT 1) UNION ALL (SELECT 2)", "(SELECT 1) UNION ALL (SELECT 2)"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", None),
    ("SHOW TABLES FROM eigenloop", None),
    ("DESCRIBE TABLE eigenloop.groups", None),
    ("desc eigenloop.groups", None),
    ("EXPLAIN SELECT 1", None),
    # keywords as data are not SQL: strings, quoted identifiers, heredocs, comments
    ("SELECT 'INTO OUTFILE ''/tmp/x''; DROP TABLE t' AS s", None),
    ("SELECT 'it\\'s; INSERT INTO t' AS s", None),
    ('SELECT 1 AS "outfile"', None),
    ("SELECT 1 AS `into outfile`", None),
    ("SELECT $$; INTO OUTFILE 'x'$$", None),
    ("SELECT $tag$ a $$ INTO OUTFILE $tag$", None),
    ("SELECT 1 -- INTO OUTFILE '/tmp/x'", None),
    ("SELECT 1 # ; DROP TABLE t", None),
    ("SELECT 1 /* INTO /* nested */ OUTFILE '/tmp/x'; */", None),
    ("SELECT count() FROM t WHERE note = 'insert into'", None),
]


@pytest.mark.parametrize("sql,runs", ACCEPTED, ids=[a for a, _ in ACCEPTED])
def test_read_only_statements_pass(sql, runs):
    assert check_read_only(sql) == (runs if runs is not None else sql.strip())


REFUSED = [
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("select 1 into outfile '/tmp/x' truncate", "INTO OUTFILE"),
    ("SELECT 1 INTO\n  /* why */ OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("SELECT 1 INTO\u200bOUTFILE '/tmp/x'", "INTO OUTFILE"),  # ClickHouse reads U+200B as a space
    ("SHOW TABLES INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("SELECT 1 INTO OUTFILE $$/tmp/x$$", "INTO OUTFILE"),
    ("SELECT $a$x$a$ INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("SELECT 1 --x\nINTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("SELECT 1 #x INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),  # '#' without a space is no comment
    ("SELECT 1 /* /* */ INTO OUTFILE '/tmp/x' */ */ INTO OUTFILE '/tmp/y'", "INTO OUTFILE"),
    ("SELECT 1; DROP TABLE eigenloop.groups", "one statement"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("INSERT INTO eigenloop.groups SELECT * FROM eigenloop.groups", "got INSERT"),
    ("  /* hi */ DROP TABLE eigenloop.groups", "got DROP"),
    ("SET readonly = 0", "got SET"),
    ("SYSTEM SHUTDOWN", "got SYSTEM"),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT"),
]


@pytest.mark.parametrize("sql,why", REFUSED, ids=[a for a, _ in REFUSED])
def test_writes_and_stacked_statements_are_refused(sql, why):
    with pytest.raises(UnsafeQuery, match=why) as e:
        check_read_only(sql)
    assert e.value.kind == "read-only"


@pytest.mark.parametrize("sql", ["SELEC 1", "", "-- nothing", "SELECT 'open", "SELECT 1 /* open"])
def test_not_sql_is_a_syntax_error(sql):
    with pytest.raises(MalformedQuery) as e:
        check_read_only(sql)
    assert e.value.kind == "bad SQL"


# --- through the engine ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="module")
def store(chdb_path) -> ClickHouseStore:
    s = open_chdb(chdb_path)
    s.command("CREATE DATABASE IF NOT EXISTS eigenloop")
    s.command("CREATE TABLE IF NOT EXISTS eigenloop.t (a Int32) ENGINE = MergeTree ORDER BY a")
    s.insert("eigenloop.t", [[1], [2]], ["a"])
    yield s
    s.close()


def test_into_outfile_writes_nothing(store, tmp_path: Path):
    # readonly=1 alone lets the embedded engine write this file (measured): the check must stop it
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    with pytest.raises(AnalyticsError, match="^read-only: INTO OUTFILE"):
        store.query(f"SELECT 1 INTO OUTFILE '{target}' TRUNCATE", readonly=True)
    fresh = tmp_path / "fresh.txt"
    with pytest.raises(AnalyticsError, match="read-only"):
        store.query(f"SELECT 1 INTO OUTFILE '{fresh}'", readonly=True)
    assert target.read_text() == "precious\n" and not fresh.exists()


def test_stacked_drop_never_runs(store):
    # chdb runs every statement of "a; b"
    with pytest.raises(AnalyticsError, match="one statement"):
        store.query("SELECT 1; DROP TABLE eigenloop.t", readonly=True)
    assert store.query("SELECT count() FROM eigenloop.t", readonly=True).rows == [(2,)]


def test_a_query_cannot_lift_its_limits(store):
    with pytest.raises(AnalyticsError, match="read-only access"):
        store.query("SELECT 1 SETTINGS max_execution_time = 0", readonly=True)


def test_reads_still_work(store):
    assert store.query("SELECT sum(a) FROM eigenloop.t;", readonly=True).rows == [(3,)]
    assert store.query("SELECT {n:Int32} + 1", {"n": 4}, readonly=True).rows == [(5,)]
    assert ("t",) in store.query("SHOW TABLES FROM eigenloop", readonly=True).rows


def test_default_limits_are_on_every_store(store):
    assert store.limits == {"max_execution_time": 30, "max_memory_usage": 2 * 1024**3}
    assert query_limits(AnalyticsSettings(query_timeout_s=5, query_max_memory_bytes=2**20)) == {
        "max_execution_time": 5, "max_memory_usage": 2**20}


@pytest.mark.parametrize("readonly", [True, False])
def test_limits_stop_runaway_queries(store, readonly):
    saved = store.limits
    store.limits = query_limits(AnalyticsSettings(query_timeout_s=1, query_max_memory_bytes=2**20))
    try:
        with pytest.raises(AnalyticsError, match="query timed out"):
            store.query("SELECT sleep(2)", readonly=readonly)
        with pytest.raises(AnalyticsError, match="out of memory"):
            store.query("SELECT count() FROM numbers(20000000) GROUP BY number % 5000000", readonly=readonly)
    finally:
        store.limits = saved


# --- the sink's query server -------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(store, chdb_path):
    srv = QueryServer(TOKEN, "eigenloop")
    srv.start(open_chdb(chdb_path))  # its own handle on the same path, as the sink does
    yield srv
    srv.shutdown()


def _post(port: int, body: bytes, token: str = TOKEN) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/query", body, {TOKEN_HEADER: token, "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_server_refuses_writes(server, tmp_path: Path):
    target = tmp_path / "x.txt"
    status, payload = _post(server.port, json.dumps({"sql": f"SELECT 1 INTO OUTFILE '{target}'"}).encode())
    assert status == 400 and payload["error"].startswith("read-only: INTO OUTFILE")
    assert not target.exists()
    status, payload = _post(server.port, json.dumps({"sql": "SELECT count() FROM eigenloop.t"}).encode())
    assert status == 200 and payload["rows"] == [[2]]


def test_server_token_is_compared_in_constant_time(server, monkeypatch):
    import daemon.ops.analytics.server as srv_module

    seen = []
    real = srv_module.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(srv_module.hmac, "compare_digest", spy)
    status, _ = _post(server.port, b'{"sql": "SELECT 1"}', token="t0ken-for-the-tesT")
    assert status == 403
    status, _ = _post(server.port, b'{"sql": "SELECT 1"}')
    assert status == 200
    assert len(seen) == 2


def _raw(port: int, head: str, body: bytes = b"") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: the reply, already received, is what counts
    return data.decode("latin-1")


def test_server_refuses_oversized_bodies_unread(server):
    # announced but never sent: a server that read it would wait for the megabyte until timeout
    head = (f"POST /query HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {TOKEN}\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n")
    reply = _raw(server.port, head, b'{"sql": "SELECT 1"')
    assert reply.startswith("HTTP/1.0 413") or reply.startswith("HTTP/1.1 413"), reply[:80]
    assert MAX_BODY_BYTES == 1024 * 1024
    missing = f"POST /query HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {TOKEN}\r\nConnection: close\r\n\r\n"
    assert " 411 " in _raw(server.port, missing).split("\r\n", 1)[0]


def test_client_refuses_to_send_what_the_server_would_refuse(server):
    from daemon.ops.analytics.access import SinkState
    from daemon.ops.analytics.server import RemoteStore

    remote = RemoteStore(SinkState(pid=1, port=server.port, token=TOKEN), "eigenloop")
    with pytest.raises(AnalyticsError, match="query too large"):
        remote.query("SELECT '" + "x" * MAX_BODY_BYTES + "'")
    assert remote.query("SELECT count() FROM eigenloop.t").rows == [(2,)]


def test_server_body_limit_is_a_parameter(store, chdb_path):
    srv = QueryServer(TOKEN, "eigenloop", max_body_bytes=64)
    srv.start(open_chdb(chdb_path))
    try:
        status, payload = _post(srv.port, json.dumps({"sql": "SELECT 1", "pad": "x" * 100}).encode())
        assert status == 413 and "64 bytes" in payload["error"]
        status, _ = _post(srv.port, b'{"sql": "SELECT 1"}')
        assert status == 200
    finally:
        srv.shutdown()
