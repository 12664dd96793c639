"""``eigenloop daemon`` (the daemon process), ``snapshot``, ``kill-switch`` and ``learner`` commands."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import typer

snapshot_app = typer.Typer(no_args_is_help=True, help="Model snapshots (weights + optimizer + RNG + offsets).")
kill_app = typer.Typer(no_args_is_help=True, help="The kill switch: stop new orders within a second.")
learner_app = typer.Typer(no_args_is_help=True, help="The resident model, offline.")

LIVE_FLAG = "--i-understand-live-trading"


def _settings():
    from daemon.cli import settings

    return settings()


async def serve_daemon(settings, *, live_ack: bool, stop: asyncio.Event | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stop``), then shut down gracefully."""
    from daemon.runtime import Daemon

    jetstream = settings.sources.jetstream_url if settings.sources.social else None
    daemon = Daemon(settings, jetstream_url=jetstream, live_trading_acknowledged=live_ack)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    typer.echo(json.dumps({"daemon": "started", "http_port": daemon.http_port,
                           "policy_version": daemon.policy.policy_version}), err=True)
    await stop.wait()
    await daemon.stop()


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon_cmd(i_understand_live_trading: bool = typer.Option(False, LIVE_FLAG,
                   help="with EIGENLOOP_LIVE_TRADING=1 and executor.mode=live: send real orders")) -> None:
        """The daemon process alone: sources, actor, executor, learner loop, HTTP (needs a broker)."""
        from daemon.cli import fail
        from daemon.errors import EigenloopError
        from daemon.kafka_local import BrokerError

        s = _settings()
        try:
            asyncio.run(serve_daemon(s, live_ack=i_understand_live_trading))
        except (EigenloopError, BrokerError) as e:
            raise fail(str(e))

    app.add_typer(snapshot_app, name="snapshot")
    app.add_typer(kill_app, name="kill-switch")
    app.add_typer(learner_app, name="learner")


def _http(method: str, path: str, timeout: float = 120.0) -> dict:
    s = _settings()
    url = f"http://{s.http.host}:{s.http.port}{path}"
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@snapshot_app.command("now")
def snapshot_now() -> None:
    """Ask the running daemon to write a snapshot now and wait for it (the preStop hook)."""
    from daemon.cli import fail

    try:
        body = _http("POST", "/snapshot")
    except (urllib.error.URLError, OSError) as e:
        raise fail(f"the daemon did not answer on its HTTP port: {e}")
    typer.echo(f"snapshot written: {body['path']}")


@snapshot_app.command("list")
def snapshot_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Snapshots under the data folder, oldest first, with policy_version and offsets."""
    from daemon import snapshots

    s = _settings()
    rows = []
    for d in snapshots.list_snapshots(snapshots.snapshot_root(s.data_dir)):
        info = snapshots.read_snapshot_info(d)
        rows.append({"path": str(d), "step": info["step"], "policy_version": info["policy_version"],
                     "offsets": info.get("metadata", {}).get("offsets", {})})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no snapshots")
    for r in rows:
        typer.echo(f"{r['path']}  step={r['step']}  policy_version={r['policy_version']}  offsets={r['offsets']}")


@kill_app.command("on")
def kill_on() -> None:
    """Engage: the flag file is written (survives restarts) and the running daemon is told."""
    s = _settings()
    flag = s.data_dir / "KILL"
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text("engaged by eigenloop kill-switch on\n")
    try:
        _http("POST", "/kill", timeout=5)
        typer.echo(f"kill switch engaged (flag {flag}; daemon told)")
    except (urllib.error.URLError, OSError):
        typer.echo(f"kill switch engaged (flag {flag}; no daemon answered, it will see the flag)")


@kill_app.command("off")
def kill_off() -> None:
    """Release: remove the flag file and tell the running daemon."""
    s = _settings()
    (s.data_dir / "KILL").unlink(missing_ok=True)
    try:
        _http("DELETE", "/kill", timeout=5)
    except (urllib.error.URLError, OSError):
        pass  # no daemon running: removing the flag is all there is to do
    typer.echo("kill switch released")


@kill_app.command("status")
def kill_status() -> None:
    s = _settings()
    flag = (s.data_dir / "KILL").exists()
    try:
        body = _http("GET", "/kill", timeout=5)
        typer.echo(f"kill switch: {'ENGAGED' if body['engaged'] else 'off'} (daemon), flag file {'present' if flag else 'absent'}")
    except (urllib.error.URLError, OSError):
        typer.echo(f"kill switch: flag file {'present' if flag else 'absent'}; no daemon answered")


@learner_app.command("bootstrap")
def learner_bootstrap(path: Optional[Path] = typer.Option(None, help="where to write it (default: the data folder's initial snapshot)"),
                      steps: Optional[int] = typer.Option(None, help="pretraining steps")) -> None:
    """Create the initial snapshot (grammar pretraining) unless one exists."""
    from daemon import snapshots
    from daemon.runtime import learner_config
    from learners.bootstrap import ensure_initial_snapshot

    s = _settings()
    target = path or s.learner.initial_snapshot or snapshots.snapshot_root(s.data_dir) / "0000000000-bootstrap"
    out = ensure_initial_snapshot(target, learner_config(s), steps=steps or s.learner.bootstrap_steps, progress=True)
    typer.echo(f"initial snapshot: {out}")
