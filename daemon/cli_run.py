"""``eigenloop run``: the main job.

With no configuration it starts the local broker, ensures the topics, creates the initial model
snapshot if missing, starts the replay servers over ``../shared/data`` (or ``--live``
websockets), and supervises three processes: the streams worker, the analytics sink and the
daemon. A compact status line follows every ``--status-every`` seconds. SIGTERM (or Ctrl-C, or
``--duration``) stops everything it started, daemon first so its final snapshot is taken while
the broker is still up.
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


async def run_all(s, *, live: bool, replay_path: Path | None, speed: float | None, symbols: list[str],
                  duration: float | None, live_ack: bool, sink: bool, status_every: float,
                  streams_argv: list[str]) -> None:
    from daemon import kafka_local
    from daemon.eventlog.admin import ensure_topics
    from daemon.runtime import load_or_bootstrap
    from daemon.supervisor import Child, Supervisor, child_env

    data_dir = Path(s.data_dir).resolve()
    started_broker = False
    bootstrap = s.kafka.bootstrap
    if not bootstrap:
        info = await asyncio.to_thread(kafka_local.start, data_dir)
        bootstrap, started_broker = info.bootstrap, True
        typer.echo(f"[run] local kafka broker at {bootstrap} (data {data_dir}/kafka)")
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={"bootstrap": bootstrap}), "data_dir": data_dir})
    created, present = await ensure_topics(s)
    typer.echo(f"[run] topics: {len(created)} created, {len(present)} present")
    typer.echo("[run] loading or bootstrapping the model (first run: grammar pretraining)...")
    state, snap = await asyncio.to_thread(load_or_bootstrap, s, sys.stdout.isatty())
    typer.echo(f"[run] model: {snap} (policy_version {state.policy_version})")
    del state  # the daemon process loads its own copy

    env = {"EIGENLOOP_KAFKA__BOOTSTRAP": bootstrap, "EIGENLOOP_DATA_DIR": str(data_dir)}
    cluster = None
    if not live:
        from daemon.replay import ReplayCluster

        path = replay_path or s.replay.data_path
        cluster = ReplayCluster(path, speed=speed or s.replay.speed, symbols=symbols, markets=("spot", "usdm"),
                                social=True)
        await cluster.start()
        env["EIGENLOOP_SOURCES__EXCHANGES"] = json.dumps([x.model_dump() for x in cluster.exchanges])
        env["EIGENLOOP_SOURCES__JETSTREAM_URL"] = cluster.jetstream_url or ""
        typer.echo(f"[run] replaying {path} at {speed or s.replay.speed}x: "
                   + ", ".join(f"{x.name} {x.symbols}" for x in cluster.exchanges))
    else:
        typer.echo("[run] live websockets: " + ", ".join(f"{x.name} {x.symbols}" for x in s.sources.exchanges))

    logs = data_dir / "logs"
    sup = Supervisor()
    argv = _eigenloop_argv()
    await sup.add(Child("streams", argv + streams_argv, child_env(env), logs / "streams.log"))
    if sink:
        await sup.add(Child("sink", argv + ["analytics", "sink"], child_env(env), logs / "sink.log"))
    daemon_argv = argv + ["daemon"] + ([LIVE_FLAG] if live_ack else [])
    await sup.add(Child("daemon", daemon_argv, child_env(env), logs / "daemon.log", stop_timeout_s=120))
    typer.echo(f"[run] children: {', '.join(c.name for c in sup.children)}; logs in {logs}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), status_every)
            except asyncio.TimeoutError:
                pass  # time for a status line
            st = await asyncio.to_thread(_daemon_status, s.http.port)
            alive = sup.alive()
            restarts = {c.name: c.restarts for c in sup.children if c.restarts}
            if st:
                typer.echo(f"[status {time.monotonic() - t0:6.0f}s] events={st['events']} decisions={st['decisions']} "
                           f"groups={st['groups']} updates={st['updates']} policy_version={st['policy_version']} "
                           f"reward_ewma={st['reward_ewma']} g2w_p50={st['group_to_weights_p50_s']}s "
                           f"alive={alive}" + (f" restarts={restarts}" if restarts else ""))
            else:
                typer.echo(f"[status {time.monotonic() - t0:6.0f}s] daemon not answering yet; alive={alive}")
            if duration and time.monotonic() - t0 >= duration:
                break
    finally:
        typer.echo("[run] stopping: daemon (final snapshot), sink, streams worker")
        await sup.stop()
        if cluster is not None:
            await cluster.stop()
        if started_broker:
            await asyncio.to_thread(kafka_local.stop, data_dir)
            typer.echo("[run] local kafka broker stopped")
        typer.echo("[run] stopped")


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(live: bool = typer.Option(False, "--live", help="live exchange and Jetstream websockets instead of replay"),
            replay: Optional[Path] = typer.Option(None, "--replay", help="recorded data root (default replay.data_path)"),
            speed: Optional[float] = typer.Option(None, help="replay speed factor (default replay.speed)"),
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
        try:
            streams_argv = streams_command(s)  # before anything starts: a bad engine fails at once
            asyncio.run(run_all(s, live=live, replay_path=replay, speed=speed,
                                symbols=[x.strip() for x in symbols.split(",") if x.strip()], duration=duration,
                                live_ack=i_understand_live_trading, sink=sink, status_every=status_every,
                                streams_argv=streams_argv))
        except (BrokerError, ConfigurationError) as e:
            raise fail(str(e))
