"""An opt-in fault hook: the process announces the moments a fault-injection harness wants to
kill it inside (the learner applying a group, a snapshot being written), and holds there when
the harness asks, so a ``kill -9`` lands inside the window rather than near it.

Why a hook and not a log tail: applying a group takes milliseconds, so a harness that reads a log
line and then kills almost always lands after the window. Here the process waits at the moment
until it is killed (or released), and the harness records the state from what the process
itself wrote, never from what it meant to hit.

``EIGENLOOP_FAULT_HOOK=<dir>`` turns it on. Unset (production), every call returns after one
check of a module constant. Set:

- each moment appends ``<pid> <name> enter <unix time>`` to ``<dir>/moments.log`` when the
  window opens and ``<pid> <name> leave <unix time>`` when it closes; a process killed inside
  the window leaves an ``enter`` (or ``hold``) as its last line;
- if ``<dir>/hold-<name>`` exists (the harness arms it), the process appends ``hold`` and waits
  at the moment while that file exists, at most ``HOLD_MAX_S``, then appends ``release``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

_DIR = Path(os.environ["EIGENLOOP_FAULT_HOOK"]) if os.environ.get("EIGENLOOP_FAULT_HOOK") else None
HOLD_MAX_S = 60.0  # a harness that armed and went away must not wedge the process for good
_POLL_S = 0.02  # how soon a held process notices it was released (it is normally killed first)


def _note(name: str, what: str) -> None:
    assert _DIR is not None
    # one O_APPEND write per line: lines of concurrent processes never interleave
    with open(_DIR / "moments.log", "a") as fh:
        fh.write(f"{os.getpid()} {name} {what} {time.time():.3f}\n")


def _armed(name: str) -> bool:
    return _DIR is not None and (_DIR / f"hold-{name}").exists()


def reached(name: str) -> None:
    """The window ``name`` opens here (blocking version, for code running in a thread)."""
    if _DIR is None:
        return
    _note(name, "enter")
    if _armed(name):
        _note(name, "hold")
        deadline = time.monotonic() + HOLD_MAX_S
        while _armed(name) and time.monotonic() < deadline:
            time.sleep(_POLL_S)  # holding still for the harness's kill: the point of the hook
        _note(name, "release")


async def reached_async(name: str) -> None:
    """The window ``name`` opens here (for the event loop: a hold waits in a thread, so the loop
    keeps serving while the harness kills the process)."""
    if _DIR is None:
        return
    await asyncio.to_thread(reached, name)


def left(name: str) -> None:
    """The window ``name`` closes here."""
    if _DIR is not None:
        _note(name, "leave")
