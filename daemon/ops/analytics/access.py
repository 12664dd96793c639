"""Sharing one chdb data path between the sink and the ``eigenloop analytics`` commands.

chdb lets only one process open a data path. The sink (inside ``eigenloop run`` or
``eigenloop analytics sink``) keeps it open for hours, so readers cannot simply open it too.
The protocol, with two ``flock`` locks next to the data path:

- ``<path>.lock`` (L): whoever holds it owns the engine for that path.
- ``<path>.state.lock`` (S): guards the moment between a sink taking L and publishing how to
  reach it, so a reader never sees "L taken, nothing published".
- ``<path>.sink.json``: the sink's pid, its query server's port and a random token (mode 0600).

Sink: take S, take L, bind the query server, write the state file, release S; on exit remove
the state file and release L. Reader: try L without blocking — got it: open chdb directly.
Otherwise take S (held only for microseconds), read the state file: a live sink → send
read-only queries to its server; none → another short-lived reader holds L, so wait for L.
The kernel drops flocks when a process dies, so a crashed sink never wedges the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Iterator

from daemon.ops.analytics.server import QueryServer, RemoteStore, SinkState
from daemon.ops.analytics.store import (AnalyticsError, ClickHouseStore, Store, open_chdb, open_server, query_limits,
                                    resolve_target)
from schemas.settings import Settings

READER_WAIT_S = 30.0


def _paths(chdb_path: Path) -> tuple[Path, Path, Path]:
    base = chdb_path.parent / chdb_path.name
    return Path(f"{base}.lock"), Path(f"{base}.state.lock"), Path(f"{base}.sink.json")


class FileLock:
    """An exclusive flock on a file; released on close or when the process dies."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Block until acquired (True) or ``timeout_s`` passed (False)."""
        if self.try_acquire():
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
            return True
        # flock has no timeout: block in a helper thread and wait on its completion
        done = threading.Event()

        def take() -> None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            done.set()

        threading.Thread(target=take, daemon=True, name=f"flock:{self.path.name}").start()
        if done.wait(timeout_s):
            self._fd = fd
            return True
        # the helper stays blocked on fd; the caller is giving up, so the fd is left to it
        return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_state(state_file: Path) -> SinkState | None:
    try:
        d = json.loads(state_file.read_text())
        return SinkState(int(d["pid"]), int(d["port"]), str(d["token"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # half-written by a crashed sink: treated as absent; the locks decide


def write_state(state_file: Path, state: SinkState) -> None:
    tmp = state_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": state.pid, "port": state.port, "token": state.token}, f)
    os.replace(tmp, state_file)  # atomic: readers see the old file or the whole new one


class _OwnedChdb(ClickHouseStore):
    """A chdb store that releases the path lock when closed."""

    def __init__(self, inner: ClickHouseStore, lock: FileLock):
        super().__init__(inner._client, inner.database, inner.where, inner.limits)
        self._lock = lock

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._lock.release()


def open_reader(settings: Settings) -> Store:
    """A store for reports and ad hoc SQL, wherever the data is and whoever holds it."""
    target = resolve_target(settings)
    if target.kind == "server":
        return open_server(target, settings)
    assert target.path is not None
    lock_file, state_lock_file, state_file = _paths(target.path)
    lock = FileLock(lock_file)
    limits = query_limits(settings.analytics)
    if lock.try_acquire():
        return _open_owned(target.path, lock, limits)
    state_lock = FileLock(state_lock_file)
    state_lock.acquire()
    try:
        state = read_state(state_file)
    finally:
        state_lock.release()
    if state is not None and state.alive():
        return RemoteStore(state, target.database)
    if not lock.acquire(READER_WAIT_S):
        raise AnalyticsError(f"chdb at {target.path} is held by another process that is not a sink; "
                             f"gave up after {READER_WAIT_S:.0f}s")
    return _open_owned(target.path, lock, limits)


def _open_owned(path: Path, lock: FileLock, limits: dict[str, int]) -> Store:
    try:
        return _OwnedChdb(open_chdb(path, limits=limits), lock)
    except BaseException:
        lock.release()
        raise


@contextlib.contextmanager
def reader(settings: Settings) -> Iterator[Store]:
    store = open_reader(settings)
    try:
        yield store
    finally:
        store.close()


class SinkOwnership:
    """What the sink holds while it runs: the engine, the path lock and the published state."""

    def __init__(self, store: ClickHouseStore, server: object | None, lock: FileLock | None,
                 state_file: Path | None):
        self.store = store
        self.server = server
        self._lock = lock
        self._state_file = state_file

    def close(self) -> None:
        try:
            if self.server is not None:
                self.server.shutdown()  # type: ignore[attr-defined]
            if self._state_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._state_file.unlink()
            self.store.close()
        finally:
            if self._lock is not None:
                self._lock.release()


def open_for_sink(settings: Settings, *, serve: bool = True) -> SinkOwnership:
    """Take the data path for the sink and publish the read-only query server."""
    target = resolve_target(settings)
    if target.kind == "server":
        return SinkOwnership(open_server(target, settings), None, None, None)
    assert target.path is not None
    lock_file, state_lock_file, state_file = _paths(target.path)
    lock = FileLock(lock_file)
    state_lock = FileLock(state_lock_file)
    state_lock.acquire()
    server = None
    try:
        if not lock.try_acquire():
            state = read_state(state_file)
            if state is not None and state.alive():
                raise AnalyticsError(f"another sink (pid {state.pid}) already writes chdb at {target.path}")
            lock.acquire()  # a reader holds it for one query
        try:
            server = QueryServer(secrets.token_hex(16), target.database) if serve else None
            if server is not None:
                write_state(state_file, SinkState(os.getpid(), server.port, server.token))
        except BaseException:
            lock.release()
            raise
    finally:
        state_lock.release()
    try:
        limits = query_limits(settings.analytics)
        store = open_chdb(target.path, target.database, limits)
        if server is not None:
            # its own engine handle: report queries must not queue behind the sink's inserts
            server.start(open_chdb(target.path, target.database, limits))
    except BaseException:
        if server is not None:
            server.shutdown()
        with contextlib.suppress(FileNotFoundError):
            state_file.unlink()
        lock.release()
        raise
    return SinkOwnership(store, server, lock, state_file if serve else None)
