"""The import rules of DESIGN.md ("Layout"), as a test.

Every module of daemon/, streams/, learners/ and schemas/ is parsed with ast, never imported
(``tests/ops/import_graph.py``), and every import statement is read: module level, inside functions, under ``if TYPE_CHECKING`` and in
try/except fallbacks, plus ``__import__``/``importlib.import_module`` of a literal name (a
computed name fails the test: it would hide the import from it). The rules:

1. Direction: ``schemas`` imports nothing of ours; ``learners`` and ``streams`` import neither each
   other nor ``daemon``. A function-level or TYPE_CHECKING import counts: it is still a dependency
   (a deferred import only hides it from import time, and a type-only one still couples the APIs).
2. No cycles between modules. Imports inside functions count (they run whenever the function does,
   and hiding a cycle in a function body is how cycles grow). TYPE_CHECKING imports do *not* count:
   they never run, and naming a caller's type in an annotation is the usual way to break a cycle.
   An edge goes to the module named (``from a.b import c`` goes to ``a.b.c`` when that is a module,
   else to ``a.b``), not to the parent packages Python also initialises on the way.
3. No private names across modules: no ``from m import _x`` and no ``m._x`` where ``m`` is an
   imported project module. A private *module* (``pkg/_impl.py``) may be imported from inside
   ``pkg``; that is what the underscore says.

4. Rooms inside ``daemon/``: ``eventlog`` and ``sources`` (I/O) import only the shared ``base``
   modules; ``service`` (the always-on process) adds the I/O rooms; ``ops`` (local broker,
   supervisor, analytics) adds the event log; ``tools`` (capture servers, efficacy, replay) add
   the service; ``cli`` may import every room. Nothing imports upwards (``DAEMON_ROOMS_BELOW``).

``learners`` is "torch only; no Kafka": no learners module imports a Kafka, Faust or exchange
client, neither itself nor through what it imports at import time (this absorbs the learners-only
``sys.modules`` check that ``tests/learners/test_grammar.py`` ran in a subprocess).

Violations in files another change is editing sit in the ALLOWED_* lists below, each with the file
that must change; an allowed entry that no longer occurs fails the test, so the lists only shrink.
"""

from __future__ import annotations

import ast

from tests.ops.import_graph import (REPO, Reader, all_imports, cycles, import_graph, import_time_closure, modules,
                                    private_module_ok, read_all, where)

# importer top-level package -> the project packages it must not import
FORBIDDEN = {
    "schemas": {"learners", "streams", "daemon"},
    "learners": {"streams", "daemon"},
    "streams": {"learners", "daemon"},
}

# third-party top-level modules a package must not import (directly, or at import time through
# the project modules it imports)
FORBIDDEN_THIRD_PARTY = {
    "learners": {"kafka", "aiokafka", "faust", "ccxt", "confluent_kafka", "pyflink"},
}

# Inside daemon/, each room imports only the rooms below it. ``base`` is what every room shares
# (errors, logging, process checks); ``cli`` sits on top and may import every room.
DAEMON_ROOMS_BELOW = {
    "base": set(),
    "eventlog": {"base"},  # I/O: the Kafka event log
    "sources": {"base"},  # I/O: exchange and social websockets
    "service": {"base", "eventlog", "sources"},  # the always-on process
    "ops": {"base", "eventlog"},  # local broker, supervisor, analytics sink and store
    "tools": {"base", "eventlog", "sources", "service"},  # capture servers, efficacy, replay
    "cli": {"base", "eventlog", "sources", "service", "ops", "tools"},
}


def daemon_room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "daemon":
        return None
    if len(parts) > 1 and parts[1] in DAEMON_ROOMS_BELOW:
        return parts[1]
    return "base"  # daemon/__init__.py and the shared top-level modules


# Violations left in files that another change is editing, each with the file that must change;
# remove an entry once its fix lands (the test then insists). Empty: none remain.
# (importer, imported module)
ALLOWED_DIRECTION: set[tuple[str, str]] = set()
# (importer, "module.private_name")
ALLOWED_PRIVATE: set[tuple[str, str]] = set()
# cycles as the sorted tuple of their modules
ALLOWED_CYCLES: set[tuple[str, ...]] = set()


def third_party_violations() -> dict[tuple[str, str], list[str]]:
    """(package module, banned third-party module) -> where: its own imports anywhere, and the
    module-level imports of whatever it imports at import time."""
    out: dict[tuple[str, str], list[str]] = {}
    external = read_all()[1]
    for module in modules():
        banned = FORBIDDEN_THIRD_PARTY.get(module.split(".")[0])
        if not banned:
            continue
        reached = import_time_closure(module)
        for e in external:
            if e.name in banned and (e.importer == module or (e.importer in reached and not e.deferred)):
                out.setdefault((module, e.name), []).append(f"{modules()[e.importer].relative_to(REPO)}:{e.line}")
    return out


def direction_violations() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for i in all_imports():
        banned = FORBIDDEN.get(i.importer.split(".")[0], set())
        if i.target.split(".")[0] in banned:
            out.setdefault((i.importer, i.target), []).append(where(i))
    return out


def room_violations() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for i in all_imports():
        here, there = daemon_room(i.importer), daemon_room(i.target)
        if here is None or there is None or here == there or i.type_only:
            continue
        if there not in DAEMON_ROOMS_BELOW[here]:
            out.setdefault((i.importer, i.target), []).append(where(i))
    return out


def private_violations() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for i in all_imports():
        if i.private and f"{i.target}.{i.private}" in modules():
            # `from pkg import _impl` / `pkg._impl`: a private module, judged by where it lives
            if private_module_ok(i.importer, f"{i.target}.{i.private}"):
                continue
        elif i.private is None and private_module_ok(i.importer, i.target):
            continue
        name = f"{i.target}.{i.private}" if i.private else i.target
        out.setdefault((i.importer, name), []).append(where(i))
    return out


def _edge_lines(a: str, b: str) -> str:
    return ", ".join(where(i) for i in all_imports() if i.importer == a and i.target == b and not i.type_only)


def _report(found: dict, allowed: set, what: str, fix: str) -> list[str]:
    lines = []
    for key in sorted(set(found) - allowed):
        lines.append(f"  {key[0]} -> {key[1]} ({', '.join(found[key])})")
    stale = sorted(allowed - set(found))
    msg = []
    if lines:
        msg.append(f"{what} ({fix}):\n" + "\n".join(lines))
    if stale:
        msg.append(f"fixed {what}, now drop them from the allow-list: {stale}")
    return msg


def test_the_walk_sees_the_whole_tree():
    # the rules must not pass vacuously: every package is read, and known imports are seen
    names = set(modules())
    assert {"daemon.cli", "streams.app", "learners.model", "schemas.settings"} <= names
    edges = {(i.importer, i.target) for i in all_imports()}
    assert ("learners.sampler", "learners.model") in edges
    assert any(i.type_only for i in all_imports()), "the `if TYPE_CHECKING:` imports are read"
    assert any(i.importer == "daemon.cli" and i.target.startswith("daemon.cli.") for i in all_imports())


def test_the_checks_notice_violations():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert private_module_ok("daemon.tools.capture_servers.binance_server", "daemon.tools.capture_servers._serving")
    assert not private_module_ok("daemon.service.runtime", "daemon.tools.capture_servers._serving")
    probe = Reader("daemon.probe")
    probe.visit(ast.parse("import daemon.cli as c\nfrom daemon.cli import kafka\n"
                          "def f():\n    from streams.app import _x\n    return c._y, kafka._z, c.app"))
    found = {(i.target, i.private) for i in probe.imports}
    assert {("daemon.cli", "_y"), ("daemon.cli.kafka", "_z"), ("streams.app", "_x")} <= found
    assert ("daemon.cli", "app") not in found
    assert {e.name for e in probe.external} == set()  # project imports only
    assert "torch" in {e.name for e in read_all()[1] if e.importer.startswith("learners.")}
    assert "daemon.procs" in import_time_closure("daemon.eventlog.connection")  # via broker_address
    assert daemon_room("daemon.service.actor") == "service" and daemon_room("daemon.errors") == "base"
    assert daemon_room("daemon.cli") == "cli" and daemon_room("streams.app") is None



def test_the_third_party_check_follows_import_time_imports(monkeypatch):
    # schemas/__init__.py imports no pydantic itself, only the record modules that do
    monkeypatch.setitem(FORBIDDEN_THIRD_PARTY, "schemas", {"pydantic", "aiokafka"})
    found = third_party_violations()
    assert ("schemas", "pydantic") in found and ("schemas.settings", "pydantic") in found
    # kafka_security imports aiokafka only when called: itself yes, its importers not
    assert ("schemas.kafka_security", "aiokafka") in found
    assert not [k for k in found if k[1] == "aiokafka" and k[0] != "schemas.kafka_security"]


def test_import_directions():
    msg = _report(direction_violations(), ALLOWED_DIRECTION, "forbidden imports",
                  "schemas imports nothing of ours; learners and streams import neither each other nor "
                  "daemon; pass what they need in from daemon")
    assert not msg, "\n".join(msg)


def test_daemon_rooms_import_only_the_rooms_below_them():
    assert set(DAEMON_ROOMS_BELOW) == {daemon_room(m) for m in modules() if m.startswith("daemon")}, \
        "every daemon/ subpackage is a room with its rules here"
    msg = _report(room_violations(), set(), "daemon rooms importing upwards",
                  "move the shared part down into the lower room, or pass it in from the caller")
    assert not msg, "\n".join(msg)


def test_learners_import_no_kafka_faust_or_exchange_clients():
    msg = _report(third_party_violations(), set(), "learners reaching a Kafka/Faust/exchange client",
                  "learners is torch only: the daemon does the I/O and hands learners plain data")
    assert not msg, "\n".join(msg)


def test_no_private_names_across_modules():
    msg = _report(private_violations(), ALLOWED_PRIVATE, "private names used across modules",
                  "make the name public or move it to the module that uses it")
    assert not msg, "\n".join(msg)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    keys = {tuple(sorted(set(c))): c for c in found}
    lines = []
    for key in sorted(set(keys) - ALLOWED_CYCLES):
        path = keys[key]
        edges = "; ".join(f"{a} -> {b} at {_edge_lines(a, b)}" for a, b in zip(path, path[1:]))
        lines.append(f"  {' -> '.join(path)}\n    {edges}")
    stale = sorted(ALLOWED_CYCLES - set(keys))
    msg = []
    if lines:
        msg.append("import cycles (move the shared part into a module both can import):\n" + "\n".join(lines))
    if stale:
        msg.append(f"fixed cycles, now drop them from the allow-list: {stale}")
    assert not msg, "\n".join(msg)
