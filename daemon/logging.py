"""structlog configuration, done once per process, with secret redaction.

Two layers keep secrets out of logs: any key that looks like a credential is masked whatever
its value, and every secret value registered with ``register_secret`` (the settings register
all their ``SecretStr`` values at start) is masked wherever it appears, even inside free text.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Iterable

import structlog

REDACTED = "***"
_SECRET_KEY = re.compile(r"(pass(word)?|secret|api[_-]?key|apikey|token|credential|private[_-]?key|sasl_password|auth)", re.I)
_secret_values: set[str] = set()
_configured = False


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it shows up in a log line from now on."""
    if value and len(value) >= 4:  # shorter values would mask innocent text
        _secret_values.add(value)


def register_settings_secrets(settings: Any) -> None:
    """Register every SecretStr found in a pydantic settings object."""
    from pydantic import BaseModel, SecretStr

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            register_secret(obj.get_secret_value())
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(settings)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secret_values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask credential-looking keys and registered secret values."""
    out = {}
    for key, value in event_dict.items():
        if _SECRET_KEY.search(key) and value is not None:
            out[key] = REDACTED
        else:
            out[key] = _scrub(value if isinstance(value, (str, dict, list, tuple)) else value)
    return out


def _scrub_rendered(logger: Any, method: str, rendered: str) -> str:
    # a last pass over the final line catches secrets inside reprs of arbitrary objects
    return _scrub(rendered)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing, not when logging was set up:
    a CLI invoked in-process (tests, CliRunner) swaps stderr for a buffer it closes afterwards."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None,
                      extra_processors: Iterable[Any] = ()) -> None:
    """Configure structlog (and the stdlib root logger) once; later calls reconfigure."""
    global _configured
    lvl = getattr(logging, level.upper())
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *extra_processors,
            redact_secrets,
            renderer,
            _scrub_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or _CurrentStderr())
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.WARNING))  # libraries (aiokafka, faust) are chatty at info
    _configured = True


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record))


def get_logger(name: str | None = None, **bound: Any) -> Any:
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)


def bind_task(**ids: Any) -> None:
    """Put these ids (the task's name, its venue, symbol, ...) on every log line the current asyncio
    task writes from now on, and on the lines of tasks it starts afterwards.

    Call it first thing in a long-running task's coroutine. asyncio gives each task a copy of the
    context it was created in, so ids bound inside one task never show up in a sibling's lines,
    and a line written deep inside a library call still says which stream or loop it came from.
    """
    structlog.contextvars.bind_contextvars(**ids)
