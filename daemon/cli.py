"""The ``eigenloop`` command line. Each command group lives in its own module; this file only
builds the app, loads the settings once (``daemon.cli_context``) and hands them on.

Every command exits non-zero with one readable line on a bad config or an unreachable
dependency, never with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from daemon import cli_analytics, cli_bench, cli_context, cli_daemon, cli_kafka, cli_run, cli_streams

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


def run() -> None:  # pragma: no cover - console entry for `python -m daemon.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
