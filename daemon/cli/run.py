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

from daemon.cli.daemon import LIVE_FLAG
from daemon.errors import EXIT_STOP, ConfigError


def _eigenloop_argv() -> list[str]:
    exe = shutil.which("eigenloop", path=str(Path(sys.executable).parent)) or shutil.which("eigenloop")
    return [exe] if exe else [sys.executable, "-m", "daemon.cli"]


def check_learner_options(s) -> None:
    """Raise ``ConfigError`` for a learner option ``LearnerConfig`` refuses, before anything
    starts: else the daemon child finds it after the broker and the streams are up, and the
    supervisor restarts it forever. The check runs in a short child process because it imports
    torch (~0.5 GB resident), which this supervisor, alive for the whole run, never uses."""
    import multiprocessing

    from daemon.service.learner_settings import learner_config_problem

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        problem = pool.apply(learner_config_problem, (s,))
    if problem:
        raise ConfigError(problem)


def _daemon_status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def streams_command(s) -> list[str]:
    """The streams child: the Faust worker, or the PyFlink job on a local mini-cluster when
    ``streams.engine`` is ``flink`` (restarted from its latest checkpoint after a crash)."""
    if s.streams.engine == "flink":
        from daemon.cli.streams import flink_python

        if flink_python() is None:
            raise ConfigError("streams.engine=flink needs PyFlink: run `make flink-setup` first "
                                  "(or set EIGENLOOP_FLINK_PYTHON)")
        return ["streams", "flink", "--local", "--restore", "auto"]
    return ["streams", "worker"]


def streams_ready_line(s) -> str:
    """What the streams child prints once it processes input: the daemon starts after it."""
    return "flink job submitted" if s.streams.engine == "flink" else "streams worker ready"


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
        from daemon.ops import kafka_local

        if self.bootstrap is not None and self.bootstrap.returncode is None:
            # a snapshot counts once its state.json is in place, written last: a stopped bootstrap leaves none
            self.bootstrap.terminate()
            await self.bootstrap.wait()
            typer.echo("[run] model bootstrap stopped")
        if self.supervisor is not None:
            typer.echo("[run] stopping: daemon (final snapshot), sink, streams worker")
            await self.supervisor.stop()
        if self.cluster is not None:
            save_replay_high_water(self.data_dir, self.cluster)
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
            f"decisions={st['decisions']} skipped={st.get('skipped', 0)} groups={st['groups']} updates={st['updates']} "
            f"policy_version={st['policy_version']} reward_ewma={st['reward_ewma']} "
            f"g2w_p50={st['group_to_weights_p50_s']}s {tail}")


async def ensure_model(s, env: dict[str, str], started: Started) -> Path:
    """The snapshot the daemon will load; a fresh model is bootstrapped first, in a child process
    (``eigenloop learner bootstrap``), so that a stop during the minutes it takes ends it."""
    from daemon.ops.supervisor import child_env
    from daemon.service import snapshots

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
        raise ConfigError(f"bootstrapping the initial model failed (exit {rc}); see the output above")
    return snapshots.newest_snapshot(root) or s.learner.initial_snapshot or root / "0000000000-bootstrap"


async def run_all(s, *, live: bool, replay_path: Path | None, speed: float | None, symbols: list[str],
                  duration: float | None, live_ack: bool, sink: bool, status_every: float,
                  streams_argv: list[str], loop: bool = False) -> None:
    """Start everything, print status lines until SIGTERM/SIGINT or ``duration``, stop everything.
    The signal handlers come first: a stop while the broker starts or the model bootstraps stops
    what was started so far (without them, those stages would die with the signal and leave the
    broker up)."""
    stop = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(sig, stop.set)
    started = Started(Path(s.data_dir).resolve())
    try:
        await _start_and_watch(s, started, stop, live=live, replay_path=replay_path, speed=speed,
                               symbols=symbols, duration=duration, live_ack=live_ack, sink=sink,
                               status_every=status_every, streams_argv=streams_argv, loop=loop)
    except Stopped:
        typer.echo("[run] stop requested while starting")
    finally:
        await started.stop()
        typer.echo("[run] stopped")
    gave_up = started.supervisor.gave_up() if started.supervisor is not None else []
    if gave_up:
        raise ConfigError("; ".join(f"the {c.name} cannot run as configured (exit {EXIT_STOP}, not restarted): "
                                    f"see {c.log_path}" for c in gave_up))


def replay_state_path(data_dir: Path) -> Path:
    return data_dir / "replay" / "state.json"


def replay_high_water(data_dir: Path) -> int | None:
    """The newest recorded time an earlier paced replay in this data folder played: this run's
    first pass starts after it (the streams' state and dedupe windows have seen up to there)."""
    try:
        return int(json.loads(replay_state_path(data_dir).read_text())["high_water_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_replay_high_water(data_dir: Path, cluster) -> None:
    lockstep = getattr(cluster, "lockstep", None)
    if lockstep is None or lockstep.high_water_ns is None:
        return
    path = replay_state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"high_water_ns": lockstep.high_water_ns}))
    tmp.replace(path)


async def _start_and_watch(s, started: Started, stop: asyncio.Event, *, live: bool, replay_path: Path | None,
                           speed: float | None, symbols: list[str], duration: float | None, live_ack: bool,
                           sink: bool, status_every: float, streams_argv: list[str], loop: bool = False) -> None:
    from daemon.eventlog.admin import ensure_topics
    from daemon.ops import kafka_local
    from daemon.ops.supervisor import Child, Supervisor, child_env
    from daemon.service import snapshots

    data_dir = started.data_dir
    bootstrap = s.kafka.bootstrap
    if not bootstrap:
        # the data folder's broker is stopped at the end, also when it was already up
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

    streams_env: dict[str, str] = {}
    if not live:
        from daemon.tools.capture_servers import ReplayCluster

        path = replay_path or s.replay.data_path
        speed = speed if speed is not None else s.replay.speed
        started.cluster = cluster = ReplayCluster(path, speed=speed, symbols=symbols, markets=("spot", "usdm"),
                                                  social=True, span_s=s.replay.span_s, loop=loop,
                                                  start_after_ns=replay_high_water(data_dir))
        await until_stopped(cluster.start(), stop)
        env["EIGENLOOP_SOURCES__EXCHANGES"] = json.dumps([x.model_dump() for x in cluster.exchanges])
        env["EIGENLOOP_SOURCES__JETSTREAM_URL"] = cluster.jetstream_url or ""
        if cluster.pace_url:
            env["EIGENLOOP_REPLAY__PACE_URL"] = cluster.pace_url
            env["EIGENLOOP_REPLAY__SEED"] = str(s.replay.seed)
            # the input pauses while the loop works: windows close in event time only
            streams_env["EIGENLOOP_STREAMS__IDLE_CLOSE"] = "false"
        how = "paced by the loop (nothing skipped)" if speed is None else f"at {speed}x (real-time emulation)"
        shift_ms = cluster.lockstep.next_shift_ms() if cluster.lockstep is not None else 0
        if shift_ms:
            how += f", time-shifted {shift_ms / 1000:.0f} s past what this data folder saw"
        typer.echo(f"[run] replaying {path} {how}: " + ", ".join(f"{x.name} {x.symbols}" for x in cluster.exchanges))
    else:
        typer.echo("[run] live websockets: " + ", ".join(f"{x.name} {x.symbols}" for x in s.sources.exchanges))

    logs = data_dir / "logs"
    started.supervisor = sup = Supervisor()
    argv = _eigenloop_argv()
    streams_log = logs / "streams.log"
    mark = streams_log.stat().st_size if streams_log.exists() else 0
    await sup.add(Child("streams", argv + streams_argv, child_env({**env, **streams_env}), streams_log))
    # the daemon's first actions must find the worker's tables in place (a worker still creating
    # its changelog topics fails on them and stalls)
    if not await until_stopped(wait_for_line(streams_log, mark, streams_ready_line(s), 180.0), stop):
        typer.echo("[run] the streams worker is not ready after 180 s; starting the daemon anyway "
                   f"(see {streams_log})")
    if sink:
        await sup.add(Child("sink", argv + ["analytics", "sink"], child_env(env), logs / "sink.log"))
    daemon_argv = argv + ["daemon"] + ([LIVE_FLAG] if live_ack else [])
    await sup.add(Child("daemon", daemon_argv, child_env(env), logs / "daemon.log", stop_timeout_s=120))
    typer.echo(f"[run] children: {', '.join(c.name for c in sup.children)}; logs in {logs}")

    t0 = time.monotonic()
    next_line = t0 + status_every
    summarised = 0  # passes whose summary was printed
    st = None
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, min(1.0, next_line - time.monotonic())))
        except asyncio.TimeoutError:
            pass  # time to look at the daemon
        if sup.given_up.is_set():
            break  # a child that cannot run as configured: the job cannot work without it
        st = await asyncio.to_thread(_daemon_status, s.http.port)
        now = time.monotonic()
        if now >= next_line:
            next_line = now + status_every
            restarts = {c.name: c.restarts for c in sup.children if c.restarts}
            typer.echo(status_line(now - t0, st, sup.alive(), restarts))
        replay = (st or {}).get("replay") or {}
        if replay.get("drained_passes", 0) > summarised:
            summarised = replay["drained_passes"]
            save_replay_high_water(data_dir, started.cluster)
            print_summary(st, "the replay is over" if not loop else f"pass {summarised} of the replay is over", s)
            typer.echo("[run] the next pass follows, time-shifted (--loop)" if loop else
                       "[run] still serving (the daemon stays up, waiting for data); Ctrl-C stops everything")
        if duration and now - t0 >= duration:
            break
    if not summarised or loop:  # a loop stopped mid-pass: the latest figures
        st = await asyncio.to_thread(_daemon_status, s.http.port) or st
        if st:
            print_summary(st, "stopping before the replay was over" if not live else "stopping", s)


async def wait_for_line(path: Path, offset: int, text: str, timeout_s: float) -> bool:
    """Whether ``text`` appears in ``path`` after byte ``offset`` within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    needle = text.encode()
    while time.monotonic() < deadline:
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(offset)
                if needle in fh.read():
                    return True
        await asyncio.sleep(0.25)  # polling a log file: no event to wait on
    return False


def print_summary(st: dict, why: str, s) -> None:
    from daemon.service.run_summary import format_summary

    typer.echo(f"[run] summary ({why}):")
    for line in format_summary(st):
        typer.echo(f"[run]   {line}")
    typer.echo("[run]   next: `eigenloop analytics learning-curve`, `eigenloop analytics groups` "
               "(all: `eigenloop analytics --help`)")
    typer.echo(f"[run]   metrics at http://127.0.0.1:{s.http.port}/metrics, status at /status")


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(live: bool = typer.Option(False, "--live", help="live exchange and Jetstream websockets instead of replay"),
            replay: Optional[Path] = typer.Option(None, "--replay", help="recorded data root (default replay.data_path)"),
            speed: Optional[float] = typer.Option(None, help="real-time emulation at this speed factor, > 0, "
                                                  "skipping what the model cannot keep up with (default: "
                                                  "replay.speed; unset, the replay is paced by the loop)"),
            span: Optional[float] = typer.Option(None, help="paced replay: play only the first SPAN seconds of "
                                                 "recorded time (default replay.span_s: all)"),
            seed: Optional[int] = typer.Option(None, help="paced replay: the actor's seed (default replay.seed)"),
            loop: bool = typer.Option(False, "--loop", help="paced replay: play the captures again and again, "
                                      "each pass time-shifted past the last, with fresh ids (an always-on demo)"),
            symbols: str = typer.Option("BTC/USDT,ETH/USDT", help="replayed symbols, comma-separated"),
            duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
            sink: bool = typer.Option(True, help="run the analytics sink"),
            status_every: float = typer.Option(10.0, help="seconds between status lines"),
            i_understand_live_trading: bool = typer.Option(False, LIVE_FLAG)) -> None:
        """Everything: broker (unless configured), topics, streams worker, analytics sink, daemon;
        replay of ../shared/data by default. Runs until SIGTERM."""
        from daemon.cli.context import fail, settings
        from daemon.errors import ReplayError
        from daemon.eventlog.broker_address import BrokerError

        s = settings()
        replay_update = {k: v for k, v in (("span_s", span), ("seed", seed)) if v is not None}
        if replay_update:
            s = s.model_copy(update={"replay": s.replay.model_copy(update=replay_update)})
        if span is not None and not span > 0:
            raise fail(f"--span must be > 0 seconds, got {span}")
        if speed is not None and not speed > 0:
            # refused, not taken for "unset": a speed someone typed must not quietly become the default
            raise fail(f"--speed must be > 0 (real-time emulation: 1 is real time; leave it out for the "
                       f"replay paced by the loop), got {speed}")
        if loop and (speed if speed is not None else s.replay.speed) is not None:
            raise fail("--loop needs the paced replay: leave out --speed (and replay.speed)")
        try:
            streams_argv = streams_command(s)  # before anything starts: a bad engine fails at once
            check_learner_options(s)  # and so does a bad learner option
            asyncio.run(run_all(s, live=live, replay_path=replay, speed=speed,
                                symbols=[x.strip() for x in symbols.split(",") if x.strip()], duration=duration,
                                live_ack=i_understand_live_trading, sink=sink, status_every=status_every,
                                streams_argv=streams_argv, loop=loop))
        except (BrokerError, ConfigError, ReplayError) as e:
            raise fail(str(e))
