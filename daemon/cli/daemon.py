"""``eigenloop daemon`` (the daemon process), ``snapshot``, ``kill-switch`` and ``learner`` commands."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
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
    from daemon.cli.context import settings

    return settings()


def live_venues_from_env(settings):
    """One ccxt exchange per configured venue (``sources.exchanges``), keyed by its name, which is
    what ``Action.exchange`` carries; each with its keys from ``EIGENLOOP_EXCHANGE_<NAME>_API_KEY``
    / ``_SECRET`` (Kubernetes Secret references, never settings files) and its ``rest_url``."""
    import os

    from daemon.errors import ConfigError
    from daemon.logging import register_secret
    from daemon.service.live_executor import LiveVenue
    from daemon.sources.ccxt_glue import make_exchange

    venues = {}
    timeout_ms = int(settings.executor.order_timeout_s * 1000)
    for x in settings.sources.exchanges:
        key = os.environ.get(f"EIGENLOOP_EXCHANGE_{x.name.upper()}_API_KEY")
        secret = os.environ.get(f"EIGENLOOP_EXCHANGE_{x.name.upper()}_SECRET")
        if not key or not secret:
            raise ConfigError(f"live trading on {x.name} needs EIGENLOOP_EXCHANGE_{x.name.upper()}_API_KEY and _SECRET")
        register_secret(key)
        register_secret(secret)
        # recvWindow = the request timeout: a request that reaches Binance later than that is
        # refused there, so one we gave up on cannot fill behind the retry's lookup
        ex = make_exchange(x.name, x.symbols, rest_url=x.rest_url,
                           options={"recvWindow": timeout_ms, "fetchCurrencies": False, "fetchMargins": False})
        ex.apiKey, ex.secret, ex.timeout = key, secret, timeout_ms
        venues[x.name] = LiveVenue(x.name, ex, list(x.symbols))
    return venues


async def serve_daemon(settings, *, live_ack: bool, stop: asyncio.Event | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stop``), then shut down gracefully."""
    from daemon.service.runtime import Daemon

    jetstream = settings.sources.jetstream_url if settings.sources.social else None
    live_venues = live_venues_from_env(settings) if settings.executor.mode == "live" and live_ack else None
    daemon = Daemon(settings, jetstream_url=jetstream, live_trading_acknowledged=live_ack,
                    live_venues=live_venues)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    typer.echo(json.dumps({"daemon": "started", "http_port": daemon.http_port,
                           "policy_version": daemon.policy.policy_version}), err=True)
    failed = await daemon.run_until(stop)
    await daemon.stop()
    if failed is not None:
        # a part died on an error it could not handle: exit so the supervisor (or Kubernetes)
        # restarts the whole daemon from its last snapshot, or stops the run if that cannot help
        from daemon.errors import exit_code

        typer.echo(f"error: daemon part failed: {failed.part}: {failed.error!r}", err=True)
        raise SystemExit(exit_code(failed.error))


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon_cmd(i_understand_live_trading: bool = typer.Option(False, LIVE_FLAG,
                   help="with EIGENLOOP_LIVE_TRADING=1 and executor.mode=live: send real orders")) -> None:
        """The daemon process alone: sources, actor, executor, learner loop, HTTP (needs a broker)."""
        from daemon.cli.context import fail
        from daemon.errors import EigenloopError, exit_code

        s = _settings()
        try:
            asyncio.run(serve_daemon(s, live_ack=i_understand_live_trading))
        except EigenloopError as e:  # BrokerError included: retriable, so the supervisor restarts it
            raise fail(str(e), exit_code(e))

    app.add_typer(snapshot_app, name="snapshot")
    app.add_typer(kill_app, name="kill-switch")
    app.add_typer(learner_app, name="learner")


def _http(method: str, path: str, timeout: float = 120.0, body: dict | None = None) -> dict:
    """Call the running daemon; non-GET calls carry the admin token (``resolve_admin_token``:
    the configured one, else the file the daemon wrote). Raises ConfigError when there is no
    token to send, urllib's HTTPError when the daemon refused, URLError/OSError when none answered."""
    from daemon.service.http import resolve_admin_token

    s = _settings()
    url = f"http://{s.http.host}:{s.http.port}{path}"
    headers = {"Content-Type": "application/json"}
    if method != "GET":
        headers["Authorization"] = f"Bearer {resolve_admin_token(s)}"
        body = {} if body is None else body
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _refusal(e: urllib.error.HTTPError) -> str:
    return f"HTTP {e.code}: {e.read().decode(errors='replace')}"


def _daemon_answers() -> bool:
    """Whether a daemon listens (an unhealthy one answers too); for when there is no token to
    call it with, which only matters if one runs."""
    try:
        _http("GET", "/healthz", timeout=5)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


@snapshot_app.command("now")
def snapshot_now() -> None:
    """Ask the running daemon to write a snapshot now and wait for it (the preStop hook)."""
    from daemon.cli.context import fail
    from daemon.errors import ConfigError

    try:
        body = _http("POST", "/snapshot")
    except ConfigError as e:
        raise fail(str(e))
    except urllib.error.HTTPError as e:
        raise fail(f"the daemon refused: {_refusal(e)}")
    except (urllib.error.URLError, OSError) as e:
        raise fail(f"the daemon did not answer on its HTTP port: {e}")
    typer.echo(f"snapshot written: {body['path']}")


@snapshot_app.command("list")
def snapshot_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Snapshots under the data folder, oldest first, with policy_version and offsets."""
    from daemon.service import snapshots

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
    """Engage: the flag file is written durably (survives restarts) and the running daemon is told."""
    from daemon.cli.context import fail
    from daemon.errors import ConfigError
    from daemon.service.executors import kill_switch_path, write_flag

    flag = kill_switch_path(_settings())
    try:
        write_flag(flag, "eigenloop kill-switch on")
    except OSError as e:
        # still stop the running daemon's orders: only the part that survives a restart failed
        try:
            _http("POST", "/kill", timeout=5)
            told = "the running daemon stopped its orders, until it restarts"
        except (ConfigError, urllib.error.URLError, OSError) as told_error:
            told = f"and no daemon could be told ({told_error})"
        raise fail(f"could not write the flag file {flag}: {e}; {told}")
    try:
        _http("POST", "/kill", timeout=5)
        typer.echo(f"kill switch engaged (flag {flag}; daemon told)")
        return
    except urllib.error.HTTPError as e:
        why = _refusal(e)
    except ConfigError as e:
        why = str(e)
        if not _daemon_answers():
            why = ""
    except (urllib.error.URLError, OSError):
        why = ""
    if why:
        # the flag alone is enough: the daemon reads it before every order
        typer.echo(f"kill switch engaged (flag {flag}); the daemon was not told ({why}), it stops at its next order")
    else:
        typer.echo(f"kill switch engaged (flag {flag}; no daemon answered, it will see the flag)")


@kill_app.command("off")
def kill_off() -> None:
    """Release: tell the running daemon (it removes the flag file), else remove the flag file."""
    from daemon.cli.context import fail
    from daemon.errors import ConfigError
    from daemon.service.executors import kill_switch_path, remove_flag

    flag = kill_switch_path(_settings())
    # the daemon first: removing the flag while a daemon refuses would leave it engaged until a
    # restart silently releases it
    try:
        _http("DELETE", "/kill", timeout=5)
    except ConfigError as e:
        if _daemon_answers():
            raise fail(f"the kill switch stays engaged: {e}")
    except urllib.error.HTTPError as e:
        raise fail(f"the kill switch stays engaged: the daemon refused to release ({_refusal(e)})")
    except (urllib.error.URLError, OSError):
        pass  # no daemon running: removing the flag is all there is to do
    try:
        remove_flag(flag)
    except OSError as e:
        raise fail(f"could not remove the flag file {flag}: {e}; the kill switch stays engaged")
    typer.echo("kill switch released")


@kill_app.command("status")
def kill_status() -> None:
    from daemon.service.executors import flag_present, kill_switch_path

    flag_file = kill_switch_path(_settings())
    present = flag_present(flag_file)
    flag = {True: "present", False: "absent", None: "UNREADABLE (counts as engaged)"}[present]
    try:
        body = _http("GET", "/kill", timeout=5)
        typer.echo(f"kill switch: {'ENGAGED' if body['engaged'] else 'off'} (daemon), flag file {flag_file} {flag}")
    except (urllib.error.URLError, OSError):
        typer.echo(f"kill switch: flag file {flag_file} {flag}; no daemon answered")


@learner_app.command("bootstrap")
def learner_bootstrap(path: Optional[Path] = typer.Option(None, help="where to write it (default: the data folder's initial snapshot)"),
                      steps: Optional[int] = typer.Option(None, help="pretraining steps")) -> None:
    """Create the initial snapshot (grammar pretraining) unless one exists."""
    from daemon.cli.context import fail
    from daemon.errors import ConfigError
    from daemon.service import snapshots
    from daemon.service.learner_settings import learner_config
    from daemon.service.runtime import apply_torch_threads
    from learners.bootstrap import ensure_initial_snapshot

    s = _settings()
    try:
        config = learner_config(s)  # first: a bad learner option fails even where a snapshot exists
    except ConfigError as e:
        raise fail(str(e))
    apply_torch_threads(s)  # as the daemon does: OpenMP threads spinning on busy cores slow torch ~7x
    existing = snapshots.newest_snapshot(snapshots.snapshot_root(s.data_dir))
    if path is None and existing is not None:
        typer.echo(f"a snapshot exists already ({existing}); nothing to bootstrap")
        return
    target = path or s.learner.initial_snapshot or snapshots.snapshot_root(s.data_dir) / "0000000000-bootstrap"
    # the bar draws on a terminal; piped into a log, plain lines say the same every few seconds
    plain = None if sys.stderr.isatty() else (lambda fields: typer.echo(
        "bootstrap " + " ".join(f"{k}={v}" for k, v in fields.items()), err=True))
    out = ensure_initial_snapshot(target, config, steps=steps or s.learner.bootstrap_steps,
                                  progress=plain is None, report=plain)
    typer.echo(f"initial snapshot: {out}")


def _pin(snapshot: Path, blocks: list[int], reason: str) -> None:
    """Online through the running daemon when one answers, else offline on the data folder's
    newest snapshot (written as a new, newer snapshot; the daemon loads it on start)."""
    from daemon.cli.context import fail
    from daemon.errors import ConfigError
    from daemon.service import snapshots
    from learners.snapshot import is_snapshot, pin_blocks

    if not is_snapshot(snapshot):
        raise fail(f"{snapshot} is not a snapshot directory (see `eigenloop snapshot list`)")
    try:
        body = _http("POST", "/pin", body={"snapshot": str(snapshot.resolve()), "blocks": blocks, "reason": reason})
        typer.echo(f"pinned blocks {body['blocks']} in the running daemon; policy_version {body['policy_version']}; "
                   f"snapshot {body['snapshot']}")
        return
    except ConfigError as e:
        if _daemon_answers():
            raise fail(str(e))
    except urllib.error.HTTPError as e:
        raise fail(f"the daemon refused: {_refusal(e)}")
    except (urllib.error.URLError, OSError):
        pass  # no daemon running: work on the snapshots on disk
    s = _settings()
    root = snapshots.snapshot_root(s.data_dir)
    # the newest snapshot that loads, as the daemon's own start picks it (a torn newest one is
    # reported and skipped): pinning into it writes what the daemon would resume from
    try:
        found = snapshots.load_newest(root, device="cpu")
    except snapshots.SnapshotUnreadable as e:
        raise fail(str(e))
    if found is None:
        raise fail(f"no snapshot under {root} to pin into")
    state, newest = found
    n = len(state.model.blocks)
    if not blocks or any(not 0 <= b < n for b in blocks):
        raise fail(f"blocks {blocks}: the model has blocks 0..{n - 1}")
    try:
        # the same rule as the daemon's: only snapshots under the snapshot root
        state = pin_blocks(state, snapshot.resolve(), blocks, root=root)
    except (ValueError, OSError) as e:
        raise fail(str(e))
    out = snapshots.write_snapshot(state, root, snapshots.snapshot_offsets(newest),
                                   extra={"pinned_from": str(snapshot), "pinned_blocks": blocks, "reason": reason},
                                   keep=s.learner.keep_snapshots, suffix="-pinned")
    typer.echo(f"no daemon answered: wrote {out} (blocks {blocks} from {snapshot}); start the daemon to use it")


@learner_app.command("pin-blocks")
def learner_pin_blocks(snapshot: Path = typer.Option(..., help="snapshot to take the blocks from"),
                       blocks: str = typer.Option(..., help="comma-separated block indices, e.g. 0,2"),
                       reason: str = typer.Option("operator rollback", help="recorded in the GuardAction")) -> None:
    """Roll back some blocks to a snapshot (weights + optimizer); the others keep learning."""
    from daemon.cli.context import fail

    try:
        idx = [int(b) for b in blocks.split(",") if b.strip()]
    except ValueError:
        raise fail(f"--blocks {blocks!r}: expected comma-separated integers")
    _pin(snapshot, idx, reason)


@learner_app.command("rollback")
def learner_rollback(snapshot: Path = typer.Option(..., help="snapshot whose whole policy to restore"),
                     reason: str = typer.Option("operator rollback", help="recorded in the GuardAction")) -> None:
    """Roll the whole policy back to a snapshot's weights; the log position is kept (no re-learning)."""
    from daemon.cli.context import fail
    from learners.snapshot import is_snapshot, read_snapshot_info

    if not is_snapshot(snapshot):
        raise fail(f"{snapshot} is not a snapshot directory (see `eigenloop snapshot list`)")
    n = read_snapshot_info(snapshot)["config"]["model"]["n_blocks"]
    _pin(snapshot, list(range(n)), reason)
