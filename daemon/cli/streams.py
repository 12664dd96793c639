"""``eigenloop streams worker``: the Faust worker that scores candidates and closes GRPO groups."""

from __future__ import annotations

from pathlib import Path

import typer

from daemon.cli.context import config_path, fail, settings

REPO = Path(__file__).resolve().parents[2]

streams_app = typer.Typer(no_args_is_help=True, help="Stream processors: rewards and GRPO groups.")


@streams_app.command("worker")
def worker(loglevel: str = typer.Option("warning", help="faust/worker log level")) -> None:
    """Run the streams worker until SIGINT/SIGTERM (state comes back from Kafka on restart)."""
    from daemon.errors import exit_code
    from daemon.eventlog import broker_address
    from daemon.eventlog.connection import client_kwargs

    s = settings()
    try:
        # the worker's clients get what every daemon client gets: streams does not import daemon
        client_kw = client_kwargs(s)
    except broker_address.BrokerError as e:  # no broker yet: a restart may find one
        raise fail(str(e), exit_code(e))
    except ValueError as e:  # SASL settings that cannot log in
        raise fail(str(e))
    from streams.app import run_worker

    run_worker(s, client_kw, loglevel=loglevel)


@streams_app.command("flink")
def flink(
    local: bool = typer.Option(False, "--local", help="run on a local Flink mini-cluster (the default)"),
    jobmanager: str = typer.Option(None, help="submit to this JobManager REST URL instead, e.g. http://flink:8081"),
    parallelism: int = typer.Option(None, min=1, help="operator parallelism (default 1)"),
    checkpoint_dir: str = typer.Option(None, help="checkpoint folder or URI (default <data_dir>/flink/<app>/checkpoints)"),
    checkpoint_interval: float = typer.Option(None, help="seconds between checkpoints (outputs commit then)"),
    restore: str = typer.Option(None, help="start from this checkpoint/savepoint path, 'latest', or 'auto' "
                                           "(the latest if any, else fresh)"),
    delivery: str = typer.Option(None, help="exactly-once (default) or at-least-once"),
    group_id: str = typer.Option(None, help="Kafka consumer group of the sources"),
    python_executable: str = typer.Option(None, help="Python of the task managers (remote clusters)"),
    connector_jar: str = typer.Option(None, help="Kafka connector jar (default: .cache/flink's), or 'classpath'"),
    topic: list[str] = typer.Option([], "--topic", help="NAME=TOPIC, e.g. learn.groups=shadow.groups (repeatable)"),
) -> None:
    """Run the PyFlink job (same rewards and groups as the worker) until stopped, or submit it."""
    import os

    from daemon.errors import exit_code
    from daemon.eventlog import broker_address
    from daemon.eventlog.connection import bootstrap_for

    s = settings()
    try:
        bootstrap = bootstrap_for(s)
    except broker_address.BrokerError as e:  # no broker yet: a restart may find one
        raise fail(str(e), exit_code(e))
    if local and jobmanager:
        raise fail("--local and --jobmanager exclude each other")
    python = flink_python()
    if python is None:
        raise fail("PyFlink is not installed: run `make flink-setup` (or set EIGENLOOP_FLINK_PYTHON)")
    argv = [python, "-m", "streams.flink_job", "--bootstrap", bootstrap]
    argv += ["--jobmanager", jobmanager] if jobmanager else ["--local"]
    opts = {"--parallelism": parallelism, "--checkpoint-dir": checkpoint_dir,
            "--checkpoint-interval": checkpoint_interval, "--restore": restore, "--delivery": delivery,
            "--group-id": group_id, "--python-executable": python_executable, "--connector-jar": connector_jar}
    for flag, value in opts.items():
        if value is not None:
            argv += [flag, str(value)]
    for item in topic:
        name, sep, physical = item.partition("=")
        if not sep or not physical:
            raise fail(f"--topic {item!r}: expected NAME=TOPIC")
        argv += [f"--topic-{name.replace('.', '-')}", physical]
    env = dict(os.environ)
    if config_path():
        env["EIGENLOOP_CONFIG"] = str(Path(config_path()).resolve())
    # the Flink interpreter has PyFlink but not this project installed: it finds `streams` and
    # `schemas` through the repository, wherever the command was started from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # replace this process: signals reach the job directly and its exit code is ours
    os.execve(python, argv, env)


def flink_python() -> str | None:
    """The interpreter that has PyFlink: EIGENLOOP_FLINK_PYTHON, the project's Flink venv
    (`make flink-setup`), or this one if PyFlink happens to be importable here."""
    import importlib.util
    import os
    import sys

    env = os.environ.get("EIGENLOOP_FLINK_PYTHON")
    if env:
        return env
    venv = REPO / ".cache" / "flink-venv" / "bin" / "python"
    if venv.exists():
        return str(venv)
    return sys.executable if importlib.util.find_spec("pyflink") else None


def register(app: typer.Typer) -> None:
    app.add_typer(streams_app, name="streams")
