"""Regenerate the hashed lock files in requirements/ (`make lock`; run with the tools venv's Python,
which has pip-tools).

    requirements/dev.lock          runtime dependencies + the dev extra: `make setup` installs it
    requirements/runtime.lock      runtime dependencies only, same pins: the cuda image
    requirements/runtime-cpu.lock  runtime.lock without torch and its CUDA wheels: the cpu image,
                                   which takes torch from the PyTorch CPU index instead

pip-compile resolves from PyPI for the interpreter running it (CPython 3.11, Linux x86_64: the same
as python:3.11-slim on amd64) and writes a sha256 for every file of every pin, so
`pip install --require-hashes` refuses anything that changed on the index. It keeps the pins
already in dev.lock unless LOCK_UPGRADE=1 (`make lock UPGRADE=1`), so adding a dependency does not
move the others. runtime.lock must pin exactly dev.lock's versions (checked here), so an image runs
what the test suite ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQ = REPO / "requirements"
DEV, RUNTIME, RUNTIME_CPU = REQ / "dev.lock", REQ / "runtime.lock", REQ / "runtime-cpu.lock"

# torch's PyPI wheel for Linux x86_64 is the CUDA build: it requires triton and the nvidia-*/cuda-*
# wheels (several GB). The CPU build from download.pytorch.org/whl/cpu requires none of them; what
# it does require (filelock, sympy, networkx, jinja2, fsspec, typing-extensions, setuptools) keeps
# its pin in runtime-cpu.lock, since only these names are dropped.
CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")

COMMON = [
    "--generate-hashes",
    # pip and setuptools are pinned too when something requires them, or --require-hashes fails
    "--allow-unsafe",
    "--strip-extras",
    # belt and braces with PIP_FIND_LINKS dropped below: no local wheel folder in the lock
    "--no-emit-find-links",
    "--no-emit-index-url",
    "--no-emit-trusted-host",
    "--quiet",
]


def compile_(output: Path, *args: str) -> None:
    env = dict(os.environ, CUSTOM_COMPILE_COMMAND="make lock")
    # a local wheel folder (PIP_FIND_LINKS) could supply a file PyPI does not have: the lock must
    # resolve from the index alone, as a clean clone and the image build do
    env.pop("PIP_FIND_LINKS", None)
    cmd = [sys.executable, "-m", "piptools", "compile", *COMMON, *args,
           f"--output-file={output.relative_to(REPO)}", "pyproject.toml"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def entries(text: str) -> list[tuple[str, str]]:
    """(normalised name, block) for each pin of a pip-compile output, block = its lines verbatim."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            out.append((re.sub(r"[-_.]+", "-", m.group(1)).lower(), line))
        elif out and line.startswith(" "):
            name, block = out[-1]
            out[-1] = (name, block + line)
    return out


def pins(text: str) -> list[str]:
    """'name==version' for each pin, the name normalised."""
    return [name + "==" + re.match(r"^\S+==([^\s\\;]+)", block).group(1) for name, block in entries(text)]


def write_cpu(runtime_text: str) -> None:
    header = (
        "#\n"
        "# runtime.lock without torch and its CUDA-only wheels (triton, nvidia-*, cuda-*), written by\n"
        "# scripts/lock.py (`make lock`). The cpu image installs torch from the PyTorch CPU index\n"
        "# first (Dockerfile), at runtime.lock's torch version, then this with --no-deps.\n"
        "#\n"
    )
    kept = [block for name, block in entries(runtime_text) if not CUDA_ONLY.match(name)]
    RUNTIME_CPU.write_text(header + "".join(kept))


def main() -> None:
    REQ.mkdir(exist_ok=True)
    upgrade = ["--upgrade"] if os.environ.get("LOCK_UPGRADE") == "1" else []
    # pip-compile prefers the pins already in its output file; the first dev.lock was seeded that
    # way with `pip freeze` of the environment the suite had been passing in.
    compile_(DEV, "--extra=dev", *upgrade)
    # Seeded with dev.lock's pins the same way (not a -c file, which would be named in every
    # "# via" comment), then checked: the image must run what the suite ran.
    RUNTIME.write_text(DEV.read_text())
    compile_(RUNTIME)
    dev = set(pins(DEV.read_text()))
    moved = [p for p in pins(RUNTIME.read_text()) if p not in dev]
    if moved:
        sys.exit(f"runtime.lock differs from dev.lock: {moved}")
    write_cpu(RUNTIME.read_text())
    for f in (DEV, RUNTIME, RUNTIME_CPU):
        print(f"{f.relative_to(REPO)}: {len(entries(f.read_text()))} pins")


if __name__ == "__main__":
    main()
