"""One exception root for the daemon: every exception class defined under daemon/
derives from ``daemon.errors.EigenloopError``, so ``except EigenloopError`` at the CLI's edge
catches every failure the daemon reports on purpose. Read with ast, never imported.

``schemas``, ``learners`` and ``streams`` may not import ``daemon`` (tests/ops/test_import_rules.py),
so their errors are ValueError subclasses of their own and are not checked here.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = "EigenloopError"
BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                      if isinstance(obj, type) and issubclass(obj, BaseException)}

# (module, class) -> why it stays outside the root
ALLOWED = {
    # control flow, not a failure: a stop signal during `eigenloop run`'s start-up, caught by its
    # caller; under the root, an `except EigenloopError` on the way would swallow the stop
    ("daemon.cli.run", "Stopped"): "a stop, not an error",
    # wraps a sink failure inside the reconnect loop and never leaves the module (the loop
    # re-raises its cause)
    ("daemon.sources.social", "_SinkError"): "module-internal wrapper",
}


def _base_names(node: ast.ClassDef) -> list[str]:
    out = []
    for b in node.bases:
        if isinstance(b, ast.Name):
            out.append(b.id)
        elif isinstance(b, ast.Attribute):
            out.append(b.attr)
    return out


def daemon_classes() -> dict[tuple[str, str], list[str]]:
    """(module, class name) -> its base names, for every class under daemon/."""
    found = {}
    for path in sorted((REPO / "daemon").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                found[(module, node.name)] = _base_names(node)
    return found


def unrooted(classes: dict[tuple[str, str], list[str]]) -> list[tuple[str, str]]:
    """Exception classes whose bases never reach the root (bases looked up by class name)."""
    by_name: dict[str, list[str]] = {}
    for (_, name), bases in classes.items():
        by_name.setdefault(name, []).extend(bases)

    def reaches(name: str, goal: set[str], seen: frozenset = frozenset()) -> bool:
        if name in goal:
            return True
        return name not in seen and any(reaches(b, goal, seen | {name}) for b in by_name.get(name, []))

    return sorted(key for key, bases in classes.items()
                  if any(reaches(b, BUILTIN_EXCEPTIONS) for b in bases) and key[1] != ROOT
                  and not any(reaches(b, {ROOT}) for b in bases))


def test_every_daemon_error_derives_from_the_root():
    found = set(unrooted(daemon_classes()))
    new = sorted(found - set(ALLOWED))
    assert not new, f"derive these from daemon.errors.EigenloopError: {new}"
    assert not set(ALLOWED) - found, f"now rooted, drop from ALLOWED: {sorted(set(ALLOWED) - found)}"


def test_the_check_notices_an_unrooted_error():
    classes = {("m", "EigenloopError"): ["RuntimeError"], ("m", "Good"): ["EigenloopError"],
               ("m", "Bad"): ["ValueError"], ("m", "Worse"): ["Bad"], ("m", "Plain"): ["object"]}
    assert unrooted(classes) == [("m", "Bad"), ("m", "Worse")]
    assert ("daemon.eventlog.broker_address", "BrokerError") in daemon_classes()
