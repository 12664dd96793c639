"""``eigenloop run``: the main job.

With no configuration it starts the local broker, ensures the topics, creates the initial model
snapshot if missing, starts the replay servers over ``../shared/data`` (or ``--live``
websockets), and supervises three processes: the streams worker, the analytics sink and the
daemon. A compact status line follows every ``--status-every`` seconds. SIGTERM (or Ctrl-C, or
``--duration``) stops everything it started, daemon first so its final snapshot is taken while
the broker is still up; at any stage, the start included (``Started``): the model bootstrap runs
as a child process for that.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

import typer

from daemon.cli_daemon import LIVE_FLAG


def _eigenloop_argv() -> list[str]:
    exe = shutil.which("eigenloop", path=str(Path(sys.executable).parent)) or shutil.which("eigenloop")
    return [exe] if exe else [sys.executable, "-m", "daemon.cli"]


def _daemon_status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


class ConfigurationError(Exception):
    """A configuration that cannot run, found before anything starts."""


def streams_command(s) -> list[str]:
    """The streams child: the Faust worker, or the PyFlink job on a local mini-cluster when
    ``streams.engine`` is ``flink`` (restarted from its latest checkpoint after a crash)."""
    if s.streams.engine == "flink":
        from daemon.cli_streams import _flink_python

        if _flink_python() is None:
            raise ConfigurationError("streams.engine=flink needs PyFlink: run `make flink-setup` first "
                                  "(or set EIGENLOOP_FLINK_PYTHON)")
        return ["streams", "flink", "--local", "--restore", "auto"]
    return ["streams", "worker"]


class Stopped(Exception):
    """SIGTERM or SIGINT arrived while ``eigenloop run`` was still starting up."""


async def until_stopped(aw, stop: asyncio.Event):
    """The result of ``aw``, unless ``stop`` is set first: then ``aw`` is cancelled and ``Stopped``
    raised. Every start stage runs under it, so a stop never waits for a slow stage to end."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not stop.is_set():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise Stopped


class Started:
    """What ``eigenloop run`` has started so far, and how to stop it, at any stage of the start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.broker: asyncio.Future | None = None  # kafka_local.start running in a thread
        self.bootstrap: asyncio.subprocess.Process | None = None
        self.cluster = None  # the replay servers
        self.supervisor = None

    async def stop(self) -> None:
        """Children first (the daemon takes its final snapshot while the broker is up), the broker last."""
        from daemon import kafka_local

        if self.bootstrap is not None and self.bootstrap.returncode is None:
            # a snapshot counts once its state.json is in place, written last: a stopped bootstrap leaves none
            self.bootstrap.terminate()
            await self.bootstrap.wait()
            typer.echo("[run] model bootstrap stopped")
        if self.supervisor is not None:
            typer.echo("[run] stopping: daemon (final snapshot), sink, streams worker")
            await self.supervisor.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.broker is not None:
            # a start in progress cannot be cancelled (it runs in a thread): let it finish, then stop it
            await asyncio.gather(self.broker, return_exceptions=True)
            if await asyncio.to_thread(kafka_local.stop, self.data_dir):
                typer.echo("[run] local kafka broker stopped")


def status_line(elapsed_s: float, st: dict | None, alive: dict[str, bool], restarts: dict[str, int]) -> str:
    tail = f"alive={alive}" + (f" restarts={restarts}" if restarts else "")
    if st is None:
        return f"[status {elapsed_s:6.0f}s] daemon not answering yet; {tail}"
    src = st["sources"]
    # events=0 with every child alive reads as "all fine" unless it says no source is connected
    return (f"[status {elapsed_s:6.0f}s] events={st['events']} sources_up={src['up']}/{src['total']} "
            f"decisions={st['decisions']} groups={st['groups']} updates={st['updates']} "
            f"policy_version={st['policy_version']} reward_ewma={st['reward_ewma']} "
            f"g2w_p50={st['group_to_weights_p50_s']}s {tail}")


async def ensure_model(s, env: dict[str, str], started: Started) -> Path:
    """The snapshot the daemon will load; a fresh model is bootstrapped first, in a child process
    (``eigenloop learner bootstrap``), so that a stop during the minutes it takes ends it."""
    from daemon import snapshots
    from daemon.supervisor import child_env

    root = snapshots.snapshot_root(s.data_dir)
    newest = snapshots.newest_snapshot(root)
    if newest is not None:
        return newest
    typer.echo("[run] no model yet: bootstrapping one (grammar pretraining, first run only)...")
    # its own session: a Ctrl-C reaches only this process, which then stops the child itself
    started.bootstrap = await asyncio.create_subprocess_exec(*_eigenloop_argv(), "learner", "bootstrap",
                                                             env=child_env(env), stdin=asyncio.subprocess.DEVNULL,
                                                             start_new_session=True)
    typer.echo(f"[run] model bootstrap running (pid {started.bootstrap.pid})")
    rc = await started.bootstrap.wait()
    if rc != 0:
        raise ConfigurationError(f"bootstrapping the initial model failed (exit {rc}); see the output above")
    return snapshots.newest_snapshot(root) or s.learner.initial_snapshot or root / "0000000000-bootstrap"


async def run_all(s, *, live: bool, replay_path: Path | None, speed: float | None, symbols: list[str],
                  duration: float | None, live_ack: bool, sink: bool, status_every: float,
                  streams_argv: list[str]) -> None:
    """Start everything, print status lines until SIGTERM/SIGINT or ``duration``, stop everything.
    The signal handlers come first: a stop while the broker starts or the model bootstraps stops
    what was started so far (before, those stages died with the signal and left the broker up)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = Started(Path(s.data_dir).resolve())
    try:
        await _start_and_watch(s, started, stop, live=live, replay_path=replay_path, speed=speed,
                               symbols=symbols, duration=duration, live_ack=live_ack, sink=sink,
                               status_every=status_every, streams_argv=streams_argv)
    except Stopped:
        typer.echo("[run] stop requested while starting")
    finally:
        await started.stop()
        typer.echo("[run] stopped")


async def _start_and_watch(s, started: Started, stop: asyncio.Event, *, live: bool, replay_path: Path | None,
                           speed: float | None, symbols: list[str], duration: float | None, live_ack: bool,
                           sink: bool, status_every: float, streams_argv: list[str]) -> None:
    from daemon import kafka_local, snapshots
    from daemon.eventlog.admin import ensure_topics
    from daemon.supervisor import Child, Supervisor, child_env

    data_dir = started.data_dir
    bootstrap = s.kafka.bootstrap
    if not bootstrap:
        # the data folder's broker is stopped at the end, as before, also when it was already up
        # (a crashed earlier run's is indistinguishable from one started by `eigenloop kafka start`)
        started.broker = broker = asyncio.ensure_future(asyncio.to_thread(kafka_local.start, data_dir))
        bootstrap = (await until_stopped(asyncio.shield(broker), stop)).bootstrap
        typer.echo(f"[run] local kafka broker at {bootstrap} (data {data_dir}/kafka)")
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={"bootstrap": bootstrap}), "data_dir": data_dir})
    created, present = await until_stopped(ensure_topics(s), stop)
    typer.echo(f"[run] topics: {len(created)} created, {len(present)} present")
    env = {"EIGENLOOP_KAFKA__BOOTSTRAP": bootstrap, "EIGENLOOP_DATA_DIR": str(data_dir)}
    snap = await until_stopped(ensure_model(s, env, started), stop)
    typer.echo(f"[run] model: {snap} (policy_version {snapshots.read_snapshot_info(snap)['policy_version']})")

    if not live:
        from daemon.replay import ReplayCluster

        path = replay_path or s.replay.data_path
        speed = speed if speed is not None else s.replay.speed
        started.cluster = cluster = ReplayCluster(path, speed=speed, symbols=symbols, markets=("spot", "usdm"),
                                                  social=True)
        await until_stopped(cluster.start(), stop)
        env["EIGENLOOP_SOURCES__EXCHANGES"] = json.dumps([x.model_dump() for x in cluster.exchanges])
        env["EIGENLOOP_SOURCES__JETSTREAM_URL"] = cluster.jetstream_url or ""
        typer.echo(f"[run] replaying {path} at {speed}x: "
                   + ", ".join(f"{x.name} {x.symbols}" for x in cluster.exchanges))
    else:
        typer.echo("[run] live websockets: " + ", ".join(f"{x.name} {x.symbols}" for x in s.sources.exchanges))

    logs = data_dir / "logs"
    started.supervisor = sup = Supervisor()
    argv = _eigenloop_argv()
    await sup.add(Child("streams", argv + streams_argv, child_env(env), logs / "streams.log"))
    if sink:
        await sup.add(Child("sink", argv + ["analytics", "sink"], child_env(env), logs / "sink.log"))
    daemon_argv = argv + ["daemon"] + ([LIVE_FLAG] if live_ack else [])
    await sup.add(Child("daemon", daemon_argv, child_env(env), logs / "daemon.log", stop_timeout_s=120))
    typer.echo(f"[run] children: {', '.join(c.name for c in sup.children)}; logs in {logs}")

    t0 = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), status_every)
        except asyncio.TimeoutError:
            pass  # time for a status line
        st = await asyncio.to_thread(_daemon_status, s.http.port)
        restarts = {c.name: c.restarts for c in sup.children if c.restarts}
        typer.echo(status_line(time.monotonic() - t0, st, sup.alive(), restarts))
        if duration and time.monotonic() - t0 >= duration:
            break


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(live: bool = typer.Option(False, "--live", help="live exchange and Jetstream websockets instead of replay"),
            replay: Optional[Path] = typer.Option(None, "--replay", help="recorded data root (default replay.data_path)"),
            speed: Optional[float] = typer.Option(None, help="replay speed factor, > 0 (default replay.speed)"),
            symbols: str = typer.Option("BTC/USDT,ETH/USDT", help="replayed symbols, comma-separated"),
            duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
            sink: bool = typer.Option(True, help="run the analytics sink"),
            status_every: float = typer.Option(10.0, help="seconds between status lines"),
            i_understand_live_trading: bool = typer.Option(False, LIVE_FLAG)) -> None:
        """Everything: broker (unless configured), topics, streams worker, analytics sink, daemon;
        replay of ../shared/data by default. Runs until SIGTERM."""
        from daemon.cli import fail, settings
        from daemon.kafka_local import BrokerError

        s = settings()
        if speed is not None and not speed > 0:
            # 0 used to fall back to the default 20x without a word
            raise fail(f"--speed must be > 0 (a replay speed factor: 1 is real time, inf as fast as the "
                       f"loop reads), got {speed}")
        try:
            streams_argv = streams_command(s)  # before anything starts: a bad engine fails at once
            asyncio.run(run_all(s, live=live, replay_path=replay, speed=speed,
                                symbols=[x.strip() for x in symbols.split(",") if x.strip()], duration=duration,
                                live_ack=i_understand_live_trading, sink=sink, status_every=status_every,
                                streams_argv=streams_argv))
        except (BrokerError, ConfigurationError) as e:
            raise fail(str(e))
