"""The one exception root for daemon code.

Callers decide what to do from the ``retriable`` flag rather than by listing classes: a
supervisor retries (with backoff) what is retriable and gives up, loudly, on the rest.
"""

from __future__ import annotations


class EigenloopError(RuntimeError):
    """Root of every error raised by eigenloop's daemon code.

    ``retriable``: doing the same thing again later can succeed (a dropped connection, a broker
    that is still starting). Not retriable: the input or the configuration is wrong, and
    retrying would fail the same way.
    """

    retriable: bool = False

    def __init__(self, message: str = "", *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(EigenloopError):
    """A setting cannot work (unknown exchange, no symbols, a bad URL)."""


class SourceError(EigenloopError):
    """A data source failed."""


class StreamDropped(SourceError):
    """A websocket stream closed or failed; the supervisor reconnects it."""

    retriable = True


class MalformedInput(SourceError):
    """A frame or record that cannot be parsed or normalised; it goes to the dead letters."""


class ReplayError(EigenloopError):
    """The replay data is missing or not in the recorded format."""
