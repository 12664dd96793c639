"""What every ``eigenloop`` command shares: the settings, loaded once when the command starts,
and the one-line failure. It sits apart from ``daemon.cli`` (which builds the app and imports
every command module) so that the command modules never import the module that imports them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from daemon.errors import EXIT_STOP
from schemas.settings import Settings, SettingsError, load_settings, unknown_env_warnings

# one invocation's state: the --config path and the settings loaded from it
_state: dict[str, object] = {}


def fail(message: str, code: int = EXIT_STOP) -> typer.Exit:
    """Print ``error: <message>`` and return the exit to raise: one readable line, no traceback.
    ``code`` is ``EXIT_STOP`` unless the failure may pass (``daemon.errors.exit_code``)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def begin(config: Path | None) -> Settings:
    """Start a command: forget the previous invocation's settings (tests invoke the app many
    times in one process) and load this one's."""
    _state.clear()
    _state["config"] = config
    return settings()


def config_path() -> Path | None:
    """The ``--config`` file this command was started with (EIGENLOOP_CONFIG included), if any."""
    return _state.get("config")  # type: ignore[return-value]


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
