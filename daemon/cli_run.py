"""``eigenloop run``: the main job."""

from __future__ import annotations

import asyncio

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run() -> None:
        """Start what is needed (the local broker when none is configured), ensure the topics,
        then run the loop until SIGTERM."""
        from daemon import kafka_local
        from daemon.cli import fail, settings
        from daemon.eventlog.admin import ensure_topics

        s = settings()
        if not s.kafka.bootstrap:
            try:
                info = kafka_local.start(s.data_dir)
            except kafka_local.BrokerError as e:
                raise fail(str(e))
            typer.echo(f"local kafka broker running at {info.bootstrap} (data {info.data_dir}/kafka)")
        try:
            created, present = asyncio.run(ensure_topics(s))
        except Exception as e:  # noqa: BLE001 - one line for any broker failure
            raise fail(f"could not ensure topics: {type(e).__name__}: {e}")
        typer.echo(f"topics: {len(created)} created, {len(present)} already present")
