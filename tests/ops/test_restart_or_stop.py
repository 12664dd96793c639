"""Restart versus stop is decided by ``retriable``: a failure that may pass exits ``EXIT_RETRY``
and ``eigenloop run``'s supervisor starts the child again; one that cannot (a bad setting) exits
``EXIT_STOP`` and the supervisor leaves it down and tells the run to stop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from typer.testing import CliRunner

from daemon.cli import app
from daemon.errors import EXIT_RETRY, EXIT_STOP, ConfigError, EigenloopError, exit_code, retriable
from daemon.eventlog.broker_address import BrokerError
from daemon.eventlog.delivery import DeliveryFatal
from daemon.ops.supervisor import Child, Supervisor, child_env
from daemon.service.live_executor import ReconcileError
from daemon.service.risk_state import RiskStateError


def test_each_error_says_whether_starting_again_can_help():
    assert retriable(BrokerError("broker away")) and exit_code(BrokerError("x")) == EXIT_RETRY
    assert retriable(ReconcileError("venue unreachable"))
    for permanent in (ConfigError("bad"), RiskStateError("unreadable"), DeliveryFatal("too large"), EigenloopError()):
        assert not retriable(permanent) and exit_code(permanent) == EXIT_STOP
    # not ours: a bug or an unforeseen library failure; restarting from the snapshot is the cure we have
    assert retriable(KeyError("x")) and exit_code(RuntimeError()) == EXIT_RETRY


def _child(tmp_path: Path, name: str, code: int) -> Child:
    starts = tmp_path / f"{name}.starts"
    script = f"open({str(starts)!r}, 'a').write('start\\n'); raise SystemExit({code})"
    return Child(name, [sys.executable, "-c", script], child_env({}), tmp_path / f"{name}.log")


def _starts(tmp_path: Path, name: str) -> int:
    path = tmp_path / f"{name}.starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_supervisor_restarts_a_retriable_exit_and_gives_up_on_a_permanent_one(tmp_path: Path):
    async def body() -> None:
        sup = Supervisor(backoff_initial_s=0.01, backoff_max_s=0.05)
        await sup.add(_child(tmp_path, "flaky", EXIT_RETRY))
        await sup.add(_child(tmp_path, "misconfigured", EXIT_STOP))
        await asyncio.wait_for(sup.given_up.wait(), 30)
        flaky = sup.children[0]
        deadline = asyncio.get_running_loop().time() + 30
        while flaky.restarts < 3:  # polls an observed count; the deadline only bounds a failure
            assert asyncio.get_running_loop().time() < deadline, f"restarted {flaky.restarts} times"
            await asyncio.sleep(0.02)
        await sup.stop()
        assert [c.name for c in sup.gave_up()] == ["misconfigured"]
        assert sup.children[1].restarts == 0 and not flaky.gave_up

    asyncio.run(asyncio.wait_for(body(), 60))
    assert _starts(tmp_path, "misconfigured") == 1
    assert _starts(tmp_path, "flaky") >= 3


def test_a_worker_without_a_broker_exits_retriable(tmp_path: Path, monkeypatch):
    # no broker configured and none started under this data folder: it may be started later
    monkeypatch.delenv("EIGENLOOP_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("EIGENLOOP_KAFKA__BOOTSTRAP", raising=False)
    monkeypatch.setenv("EIGENLOOP_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["streams", "worker"])
    assert result.exit_code == EXIT_RETRY, result.output
    assert "no Kafka broker configured" in result.output
