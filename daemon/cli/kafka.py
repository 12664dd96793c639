"""``eigenloop kafka start|stop|status`` and ``eigenloop topics ensure|list``."""

from __future__ import annotations

import asyncio
import json

import typer

from daemon.ops import kafka_local

from daemon.cli.context import fail, settings
from daemon.eventlog import broker_address

kafka_app = typer.Typer(no_args_is_help=True, help="The local single-node Kafka broker (KRaft, 127.0.0.1).")
topics_app = typer.Typer(no_args_is_help=True, help="The topic catalogue.")


@kafka_app.command("start")
def kafka_start(port: int = typer.Option(0, help="listener port; 0 picks a free one"),
                heap: str = typer.Option("512m", help="broker JVM heap")) -> None:
    """Fetch the jars if needed, format KRaft storage, start the broker and wait until it answers."""

    s = settings()
    try:
        info = kafka_local.start(s.data_dir, port=port or None, heap=heap)
    except broker_address.BrokerError as e:
        raise fail(str(e))
    typer.echo(f"kafka broker running at {info.bootstrap} (pid {info.pid}, data {info.data_dir}/kafka)")


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the broker this data folder started, by PID."""
    s = settings()
    if kafka_local.stop(s.data_dir):
        typer.echo("kafka broker stopped")
    else:
        typer.echo("no local kafka broker was running")


@kafka_app.command("status")
def kafka_status() -> None:
    """Say whether the local broker runs and answers; exit 1 if not."""
    s = settings()
    info = broker_address.status(s.data_dir)
    if info is None:
        typer.echo("kafka broker: not running")
        raise typer.Exit(1)
    ok = broker_address.broker_answers(info.bootstrap)
    typer.echo(f"kafka broker: {'running' if ok else 'not answering'} at {info.bootstrap} (pid {info.pid})")
    if not ok:
        raise typer.Exit(1)


@topics_app.command("ensure")
def topics_ensure(partitions: int = typer.Option(0, help="override every topic's partition count (0: catalogue)")) -> None:
    """Create every catalogue topic that is missing; safe to run any number of times."""
    from daemon.eventlog.admin import ensure_topics
    from daemon.eventlog.connection import bootstrap_for

    s = settings()
    try:
        bootstrap = bootstrap_for(s)
        created, existing = asyncio.run(ensure_topics(s, partitions=partitions or None))
    except broker_address.BrokerError as e:
        raise fail(str(e))
    except Exception as e:  # noqa: BLE001 - one readable line for any broker failure
        raise fail(f"could not ensure topics on {s.kafka.bootstrap or 'the local broker'}: {type(e).__name__}: {e}")
    typer.echo(f"topics on {bootstrap}: {len(created)} created, {len(existing)} already present")
    for name in created:
        typer.echo(f"  created {name}")


@topics_app.command("list")
def topics_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the catalogue: name, key, partitions, retention, dead-letter partner."""
    from schemas.topics import catalogue

    s = settings()
    rows = [dict(name=t.name, key=t.key, partitions=t.partitions, retention_ms=t.retention_ms,
                 compacted=t.compacted, dead_letter=t.dead_letter) for t in catalogue(s.kafka.topic_prefix)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        ret = "forever" if r["retention_ms"] is None else f"{r['retention_ms'] // 86_400_000}d"
        typer.echo(f"{r['name']:<24} key={r['key']:<22} partitions={r['partitions']:<3} retention={ret:<8} dlq={r['dead_letter']}")
