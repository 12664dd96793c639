"""The ``eigenloop`` command line. Each command group lives in its own module; this file only
builds the app, loads the settings once and hands them on.

Every command exits non-zero with one readable line on a bad config or an unreachable
dependency, never with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from schemas.settings import Settings, SettingsError, load_settings, unknown_env_warnings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="eigenloop: an always-on daemon that learns continuously from its own actions.")

_state: dict[str, object] = {}


def fail(message: str, code: int = 2) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def settings() -> Settings:
    """The settings loaded by the root callback (validated once, at start)."""
    if "settings" not in _state:
        try:
            _state["settings"] = load_settings(_state.get("config"))  # type: ignore[arg-type]
        except SettingsError as e:
            raise fail(str(e))
        # a warning, not a failure: a stray variable in a shared environment (a CI runner, a pod
        # with injected env) must not stop a daemon, but a misspelt one must not pass unseen
        for line in unknown_env_warnings():
            typer.echo(line, err=True)
    return _state["settings"]  # type: ignore[return-value]


@app.callback()
def main(config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="EIGENLOOP_CONFIG",
                                               help="YAML settings file (env EIGENLOOP_* overrides it)")) -> None:
    _state.clear()
    _state["config"] = config
    s = settings()
    from daemon.logging import configure_logging, register_settings_secrets

    register_settings_secrets(s)
    configure_logging(s.log_level, s.log_format)


def _register() -> None:
    from daemon import cli_kafka

    app.add_typer(cli_kafka.kafka_app, name="kafka")
    app.add_typer(cli_kafka.topics_app, name="topics")
    for name in ("cli_streams", "cli_run", "cli_daemon", "cli_analytics", "cli_bench"):
        try:
            module = __import__(f"daemon.{name}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"daemon.{name}":
                raise
            continue
        module.register(app)


_register()


def run() -> None:  # pragma: no cover - console entry for `python -m daemon.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
