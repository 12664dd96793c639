"""``eigenloop streams worker``: the Faust worker that scores candidates and closes GRPO groups."""

from __future__ import annotations

import typer

streams_app = typer.Typer(no_args_is_help=True, help="Stream processors: rewards and GRPO groups.")


@streams_app.command("worker")
def worker(loglevel: str = typer.Option("warning", help="faust/worker log level")) -> None:
    """Run the streams worker until SIGINT/SIGTERM (state comes back from Kafka on restart)."""
    from daemon import kafka_local
    from daemon.cli import fail, settings
    from daemon.eventlog.connection import bootstrap_for

    s = settings()
    try:
        bootstrap = bootstrap_for(s)
    except kafka_local.BrokerError as e:
        raise fail(str(e))
    from streams.app import run_worker

    run_worker(s, bootstrap, loglevel=loglevel)


def register(app: typer.Typer) -> None:
    app.add_typer(streams_app, name="streams")
