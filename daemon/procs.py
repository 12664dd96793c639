"""Whether a process is alive, for the files that name the process writing them (the local
broker's pid file, a snapshot's temporary directory)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: assume it is there
    # a zombie still answers kill(0); /proc tells the truth
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True
