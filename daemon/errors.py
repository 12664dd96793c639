"""The one exception root of the daemon's errors: ``except EigenloopError`` catches every failure
the daemon reports on purpose, and the CLI prints it as one line.

There is no retry flag on it. Retries are decided where the failure is understood: the process
supervisor restarts children by exit status, the sources reconnect on their transports' own
errors, and event delivery goes by aiokafka's ``retriable``. (An earlier ``retriable`` here was
read by nothing, issue 19.)

Packages that may not import ``daemon`` (``schemas``, ``learners``, ``streams``) cannot derive from
it: their errors are ``ValueError`` subclasses of their own (``SettingsError``, ``DecodeError``, ...).
"""

from __future__ import annotations


class EigenloopError(RuntimeError):
    """Root of every error raised by eigenloop's daemon code."""


class ConfigError(EigenloopError):
    """A setting cannot work (unknown exchange, no symbols, a bad URL, an engine not installed)."""


class MalformedInput(EigenloopError):
    """A frame or record that cannot be parsed or normalised; it goes to the dead letters."""


class ReplayError(EigenloopError):
    """The replay data is missing or not in the recorded format."""
