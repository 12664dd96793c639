"""The one exception root of the daemon's errors: ``except EigenloopError`` catches every failure
the daemon reports on purpose, and the CLI prints it as one line.

``retriable`` says whether the same process, started again, can succeed: a broker that is away
will be back, a bad setting or an unreadable risk file will not. It decides restart versus stop:
a command that fails exits ``EXIT_RETRY`` or ``EXIT_STOP`` (``exit_code``), the process
supervisor of ``eigenloop run`` restarts a child that exited ``EXIT_RETRY`` (or crashed, or was
killed) and stops the run when one exits ``EXIT_STOP``, since restarting it would only repeat
the failure. Finer retries stay where the failure is understood: the sources reconnect on their
transports' errors, and event delivery goes by aiokafka's own ``retriable``.

Packages that may not import ``daemon`` (``schemas``, ``learners``, ``streams``) cannot derive from
it: their errors are ``ValueError`` subclasses of their own (``SettingsError``, ``DecodeError``, ...).
"""

from __future__ import annotations

from typing import ClassVar

# sysexits.h: EX_TEMPFAIL, "try again later"
EXIT_RETRY = 75
# what click and the settings loader already exit with on a usage or config error
EXIT_STOP = 2


class EigenloopError(RuntimeError):
    """Root of every error raised by eigenloop's daemon code."""

    retriable: ClassVar[bool] = False


class ConfigError(EigenloopError):
    """A setting cannot work (unknown exchange, no symbols, a bad URL, an engine not installed)."""


class MalformedInput(EigenloopError):
    """A frame or record that cannot be parsed or normalised; it goes to the dead letters."""


class ReplayError(EigenloopError):
    """The replay data is missing or not in the recorded format."""


def retriable(error: BaseException) -> bool:
    """Whether starting again can help. An error that is not ours is a bug or a library failure
    we did not foresee: restarting from the last snapshot is the best we can do, so it counts as
    retriable (the supervisor's backoff keeps a crash loop slow)."""
    return error.retriable if isinstance(error, EigenloopError) else True


def exit_code(error: BaseException) -> int:
    return EXIT_RETRY if retriable(error) else EXIT_STOP
