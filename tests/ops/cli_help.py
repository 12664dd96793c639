"""Print ``eigenloop <path> --help`` for many subcommand paths from one process.

Each start of the console script imports the whole package (seconds on a busy machine), so the
runbook test asks this driver for every help page at once. It calls the same entry point the
``eigenloop`` console script does (read from the installed distribution's metadata), with the
same arguments, and records each exit code and output.

Usage: ``python tests/ops/cli_help.py < paths.json > pages.json`` (a JSON list of lists).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from importlib.metadata import entry_points


def main() -> None:
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "eigenloop"]
    cli = ep.load()
    pages = []
    for path in json.load(sys.stdin):
        out = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli([*path, "--help"], prog_name="eigenloop")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception as e:  # noqa: BLE001 - a crash is a parse failure to report
                code, _ = 1, out.write(f"{type(e).__name__}: {e}")
        pages.append([code, out.getvalue()])
    json.dump(pages, sys.stdout)


if __name__ == "__main__":
    main()
