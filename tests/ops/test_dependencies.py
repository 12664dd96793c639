"""Declared dependencies and the hashed lock: every third-party module the product code
imports is declared in pyproject.toml, every declared dependency is pinned in the lock, and every
pin carries hashes; `make setup` and the Dockerfile install from the locks. No broker, no network:
the imports are read with ast, never executed."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FIRST_PARTY = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
LOCKS = REPO / "requirements"
DEV_LOCK, RUNTIME_LOCK, CPU_LOCK = LOCKS / "dev.lock", LOCKS / "runtime.lock", LOCKS / "runtime-cpu.lock"

# Modules that only the PyFlink job imports; they live in .cache/flink-venv (`make flink-setup`),
# not in this environment, so packages_distributions() cannot name their distributions.
FLINK_ONLY = {"pyflink": "apache-flink", "confluent_kafka": "confluent-kafka"}
# what the cpu image leaves out of runtime.lock (scripts/lock.py): torch and its CUDA-only wheels
CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


@functools.cache
def product_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the files importing it, anywhere in a file (functions and
    try/except ImportError fallbacks included: code that runs is code that needs the package)."""
    found: dict[str, set[str]] = {}
    for pkg in sorted(FIRST_PARTY):
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".", 1)[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def undeclared(runtime: set[str], flink: set[str]) -> list[str]:
    """Problems with the product's imports against the given declared distribution names."""
    dists = _packages_distributions()
    problems = []
    for module, files in sorted(product_imports().items()):
        if module in FLINK_ONLY:
            if canonicalize_name(FLINK_ONLY[module]) not in flink:
                problems.append(f"{module} ({FLINK_ONLY[module]}, {sorted(files)}) is not in the flink extra")
            continue
        provided = {canonicalize_name(d) for d in dists.get(module, [])}
        if not provided:
            problems.append(f"{module} ({sorted(files)}) is not installed here: which distribution is it?")
        elif not provided & runtime:
            problems.append(f"{module} ({sorted(files)}) comes from {sorted(provided)}, "
                            "not declared in [project] dependencies")
    return problems


def lock_entries(path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes), checking every line is a pin, a hash or a comment."""
    entries: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if m := re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*\\?", s):
            name = canonicalize_name(m.group(1))
            assert name not in entries, f"{path.name}: {name} pinned twice"
            entries[name] = (m.group(2), [])
        elif m := re.fullmatch(r"--hash=sha256:([0-9a-f]{64})\s*\\?", s):
            assert name, f"{path.name}: a hash before any pin"
            entries[name][1].append(m.group(1))
        else:
            raise AssertionError(f"{path.name}: not an == pin or a sha256 hash: {line!r}")
    return entries


def test_product_imports_are_declared():
    runtime = names(PROJECT["dependencies"])
    flink = names(PROJECT["optional-dependencies"]["flink"])
    assert not undeclared(runtime, flink)


def test_the_import_check_notices_a_missing_declaration():
    # the check above must not pass vacuously (an empty walk, a broken mapping)
    runtime = names(PROJECT["dependencies"])
    flink = names(PROJECT["optional-dependencies"]["flink"])
    assert {"aiohttp", "torch", "faust", "pydantic", "pyflink"} <= set(product_imports())
    assert any(p.startswith("aiohttp ") for p in undeclared(runtime - {"aiohttp"}, flink))
    assert any(p.startswith("pyflink ") for p in undeclared(runtime, flink - {"apache-flink"}))


def test_every_lock_entry_is_pinned_with_hashes():
    for lock in (DEV_LOCK, RUNTIME_LOCK, CPU_LOCK):
        entries = lock_entries(lock)
        assert len(entries) > 50, f"{lock.name} looks truncated"
        assert not [n for n, (_, hashes) in entries.items() if not hashes], f"{lock.name}: pins without a hash"


def test_declared_dependencies_are_locked_at_allowed_versions():
    dev = lock_entries(DEV_LOCK)
    runtime = lock_entries(RUNTIME_LOCK)
    for lock, entries, reqs in ((DEV_LOCK, dev, PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]),
                                (RUNTIME_LOCK, runtime, PROJECT["dependencies"])):
        for r in map(Requirement, reqs):
            name = canonicalize_name(r.name)
            assert name in entries, f"{r} is not in {lock.name}: run `make lock`"
            assert r.specifier.contains(entries[name][0], prereleases=True), \
                f"{lock.name} pins {name}=={entries[name][0]}, outside {r}: run `make lock`"


def test_locks_agree():
    dev, runtime, cpu = lock_entries(DEV_LOCK), lock_entries(RUNTIME_LOCK), lock_entries(CPU_LOCK)
    # the image runs what the suite ran
    assert {n: v for n, (v, _) in runtime.items() if dev[n][0] != v} == {}
    assert set(runtime) <= set(dev)
    # the cpu image: the same pins and hashes, less torch and the CUDA wheels it brings
    assert cpu == {n: e for n, e in runtime.items() if not CUDA_ONLY.match(n)}
    assert "torch" in runtime and "torch" not in cpu


def test_installed_versions_are_the_locked_ones():
    # `make setup` installs dev.lock, so the suite runs exactly the pinned versions
    drift = {}
    for name, (version, _) in lock_entries(DEV_LOCK).items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if installed != version:
            drift[name] = (version, installed)
    assert not drift, f"(locked, installed) differ, run `make setup`: {drift}"


def test_make_and_the_image_install_from_the_locks():
    makefile = (REPO / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*?)\n\n", makefile, flags=re.M | re.S).group(1)
    assert "$(DEV_LOCK)" in stamp.splitlines()[0], "the venv is rebuilt when the lock changes"
    assert "--require-hashes -r $(DEV_LOCK)" in stamp and "--no-deps -e ." in stamp
    assert re.search(r"^DEV_LOCK := requirements/dev\.lock$", makefile, flags=re.M)
    assert re.search(r"^lock:", makefile, flags=re.M)

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements/runtime.lock requirements/runtime-cpu.lock ./requirements/" in dockerfile
    assert "--require-hashes -r requirements/runtime.lock" in dockerfile
    assert "--require-hashes -r requirements/runtime-cpu.lock" in dockerfile
    assert re.search(r"pip install --no-deps \. \\\n && pip check", dockerfile), "nothing resolved past the lock"
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "!requirements/runtime.lock" in ignore and "!requirements/runtime-cpu.lock" in ignore
