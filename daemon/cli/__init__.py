"""The ``eigenloop`` command line. Each command group lives in its own module; this file only
builds the app, loads the settings once (``daemon.cli.context``) and hands them on.

Every command exits non-zero with one readable line on a bad config or an unreachable
dependency, never with a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from daemon.cli import analytics as cli_analytics
from daemon.cli import bench as cli_bench
from daemon.cli import context as cli_context
from daemon.cli import daemon as cli_daemon
from daemon.cli import kafka as cli_kafka
from daemon.cli import run as cli_run
from daemon.cli import streams as cli_streams

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="eigenloop: an always-on daemon that learns continuously from its own actions.")


@app.callback()
def main(config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="EIGENLOOP_CONFIG",
                                               help="YAML settings file (env EIGENLOOP_* overrides it)")) -> None:
    s = cli_context.begin(config)
    from daemon.logging import configure_logging, register_settings_secrets

    register_settings_secrets(s)
    configure_logging(s.log_level, s.log_format)


app.add_typer(cli_kafka.kafka_app, name="kafka")
app.add_typer(cli_kafka.topics_app, name="topics")
for _module in (cli_streams, cli_run, cli_daemon, cli_analytics, cli_bench):
    _module.register(app)

