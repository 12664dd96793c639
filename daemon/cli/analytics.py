"""``eigenloop analytics ...``: migrations, the sink, canned reports and ad hoc SQL.

Every failure (bad SQL, missing table, unreachable server, a path held by someone else) ends
in one ``error:`` line and a non-zero exit; ``AnalyticsError`` carries that line.
"""

from __future__ import annotations

import asyncio
import signal
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from daemon.cli.context import fail, settings
from daemon.ops.analytics import collapse

analytics_app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                            help="Learning analytics in ClickHouse (embedded chdb by default).")


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _settings():
    from daemon.ops.analytics.store import quiet_driver_logs

    quiet_driver_logs()
    return settings()


def _emit(name: str, results: dict, fmt: Format, plot: Optional[Path]) -> None:
    from daemon.ops.analytics import reports

    if fmt is Format.json:
        typer.echo(reports.to_json(results, name))
    elif fmt is Format.csv:
        typer.echo(reports.to_csv(results), nl=False)
    else:
        from rich.console import Console

        console = Console()
        reports.to_tables(results, console.print)
    if plot is not None:
        from daemon.ops.analytics.plotting import render

        try:
            render(name, results, plot)
        except OSError as e:
            raise fail(f"cannot write {plot}: {e.strerror or e}")
        if fmt is Format.table:
            typer.echo(f"plot written to {plot}")


def _run(name: str, fmt: Format, plot: Optional[Path], sql: Optional[str] = None) -> None:
    from daemon.ops.analytics import reports
    from daemon.ops.analytics.access import reader
    from daemon.ops.analytics.store import AnalyticsError

    try:
        with reader(_settings()) as store:
            results = reports.run_sql(store, sql) if sql is not None else reports.run_report(store, name)
    except AnalyticsError as e:
        raise fail(str(e))
    _emit(name, results, fmt, plot)


FORMAT_OPT = typer.Option(Format.table, "--format", "-f", help="table (terminal), json or csv")
PLOT_OPT = typer.Option(None, "--plot", help="also render the report to this PNG")


@analytics_app.callback()
def analytics(ctx: typer.Context,
              sql: Optional[str] = typer.Option(None, "--sql", help="run one read-only query and print it"),
              fmt: Format = FORMAT_OPT, plot: Optional[Path] = PLOT_OPT) -> None:
    """Reports over the learning log. With --sql, runs that query instead of a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    if sql is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _run("sql", fmt, plot, sql)


def _report_command(name: str, help_text: str) -> None:
    def command(fmt: Format = FORMAT_OPT, plot: Optional[Path] = PLOT_OPT) -> None:
        _run(name, fmt, plot)

    command.__doc__ = help_text[0].upper() + help_text[1:] + "."
    analytics_app.command(name)(command)


def _register_reports() -> None:
    from daemon.ops.analytics.reports import REPORTS

    for report in REPORTS.values():
        _report_command(report.name, report.help)


@analytics_app.command("sql")
def sql_command(query: str = typer.Argument(..., help="the SQL (read-only)"),
                fmt: Format = FORMAT_OPT, plot: Optional[Path] = PLOT_OPT) -> None:
    """Run one read-only ad hoc query (same as --sql)."""
    _run("sql", fmt, plot, query)


@analytics_app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the tables and views (idempotent; safe to run again)."""
    from daemon.ops.analytics.access import reader
    from daemon.ops.analytics.migrations import migrate
    from daemon.ops.analytics.server import RemoteStore
    from daemon.ops.analytics.store import AnalyticsError

    try:
        with reader(_settings()) as store:
            if isinstance(store, RemoteStore):
                # the running sink migrated the path when it started; report where it stands
                rows = store.query(f"SELECT version, name FROM {store.database}.schema_migrations FINAL "
                                   "ORDER BY applied_at").rows
                typer.echo(f"{store.where} owns the store and applied its migrations at start:")
                for version, name in rows:
                    typer.echo(f"  {version}: {name}")
                return
            applied = migrate(store, store.database)
    except AnalyticsError as e:
        raise fail(str(e))
    if applied:
        for line in applied:
            typer.echo(f"applied {line}")
    else:
        typer.echo("schema is up to date")


@analytics_app.command("status")
def status_command(fmt: Format = FORMAT_OPT) -> None:
    """Who holds the store, and the row count of every table."""
    from daemon.ops.analytics.access import reader
    from daemon.ops.analytics.store import AnalyticsError

    try:
        with reader(_settings()) as store:
            where = getattr(store, "where", "")
            results = {"tables": (_status_section(), store.query(
                f"SELECT name AS table, engine, total_rows FROM system.tables WHERE database = '{store.database}' "
                "AND NOT startsWith(name, '.inner') ORDER BY name", readonly=True))}
    except AnalyticsError as e:
        raise fail(str(e))
    if fmt is Format.table:
        typer.echo(f"store: {where}")
    _emit("status", results, fmt, None)


def _status_section():
    from daemon.ops.analytics.reports import Section

    return Section("tables", "Tables", "")


@analytics_app.command("sink")
def sink_command(group_id: str = typer.Option("eigenloop-analytics-sink", help="Kafka consumer group"),
                 serve: bool = typer.Option(True, help="serve read-only queries to `eigenloop analytics`")) -> None:
    """Consume every topic into the analytics store until interrupted (SIGINT/SIGTERM)."""
    from daemon.ops.analytics.sink import run_sink
    from daemon.ops.analytics.store import AnalyticsError, resolve_target

    s = _settings()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stats = await run_sink(s, stop, group_id=group_id, serve=serve,
                               on_ready=lambda: typer.echo(f"analytics sink running: {resolve_target(s).describe()}"))
        typer.echo(f"analytics sink stopped: {stats.total} rows inserted, {stats.duplicates} duplicates skipped")

    from aiokafka.errors import KafkaError

    from daemon.errors import EXIT_RETRY, exit_code
    from daemon.eventlog.broker_address import BrokerError

    try:
        asyncio.run(main())
    except AnalyticsError as e:
        raise fail(str(e), exit_code(e))
    except (KafkaError, BrokerError, OSError) as e:  # broker unreachable or not started: it may come back
        raise fail(f"kafka: {e}", EXIT_RETRY)


def register(app: typer.Typer) -> None:
    from daemon.cli.replay import replay_command

    _register_reports()
    app.add_typer(analytics_app, name="analytics")
    app.command("replay")(replay_command)


@analytics_app.command("collapse")
def collapse_command(fmt: Format = FORMAT_OPT, plot: Optional[Path] = PLOT_OPT,
                     window: Optional[int] = typer.Option(None, "--window", min=1, help="groups per window "
                                                          f"(default {collapse.DEFAULT_WINDOW}, the guard's)"),
                     last: int = typer.Option(20_000, "--last", min=1, help="only the newest this-many groups"),
                     floor: float = typer.Option(collapse.DEFAULT_FLOOR, "--floor",
                                                 help="entropy floor to draw and compare, bits")) -> None:
    """Diversity of the generated actions over time, and whether (and since when) it is falling."""
    # its own options, and computed in Python: the entropy needs the grammar's parser
    from daemon.ops.analytics import reports
    from daemon.ops.analytics.access import reader
    from daemon.ops.analytics.store import AnalyticsError

    try:
        with reader(_settings()) as store:
            groups, updates, guard = collapse.query(store, last)
    except AnalyticsError as e:
        raise fail(str(e))
    results, trend = collapse.compute(groups, updates, guard, window, floor)
    if fmt is Format.json:
        typer.echo(reports.to_json(results, "collapse"))
    elif fmt is Format.csv:
        typer.echo(reports.to_csv(results), nl=False)
    else:
        from rich.console import Console

        typer.echo(trend.statement)
        reports.to_tables({k: v for k, v in results.items() if k != "verdict"}, Console().print)
    if plot is not None:
        try:
            collapse.render(results, trend, plot, floor)
        except OSError as e:
            raise fail(f"cannot write {plot}: {e.strerror or e}")
        if fmt is Format.table:
            typer.echo(f"plot written to {plot}")
