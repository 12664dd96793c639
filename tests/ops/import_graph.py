"""The project's import graph, read with ast (never imported), for tests/ops/test_import_rules.py.

Every import statement of every module of the project's packages: module level, inside functions
(``deferred``), under ``if TYPE_CHECKING`` (``type_only``), ``__import__``/``import_module`` of a
literal name, and each ``module._private`` attribute read on an imported project module.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("daemon", "streams", "learners", "schemas")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the project module the statement names
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`
    deferred: bool  # inside a function: runs when called, not at import
    private: str | None = None  # the private name taken from `target`, if any


@dataclass(frozen=True)
class External:
    importer: str
    name: str  # top-level third-party module
    line: int
    deferred: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _project_module(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a project module, or None for third-party names."""
    parts = dotted.split(".")
    if parts[0] not in PACKAGES:
        return None
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in modules():
            return name
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


class Reader(ast.NodeVisitor):
    """Collects one module's imports and its ``module._private`` attribute reads."""

    def __init__(self, module: str):
        self.module = module
        self.imports: list[Import] = []
        self.external: list[External] = []
        self.bound: dict[str, str] = {}  # local name -> project module it is bound to
        self.type_only = False
        self.depth = 0  # function nesting

    def _add(self, target: str, line: int, private: str | None = None) -> None:
        self.imports.append(Import(self.module, target, line, self.type_only, self.depth > 0, private))

    def _external(self, dotted: str, line: int) -> None:
        top = dotted.split(".")[0]
        if top and top not in PACKAGES and not self.type_only:
            self.external.append(External(self.module, top, line, self.depth > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            outer, self.type_only = self.type_only, True
            for child in node.body:
                self.visit(child)
            self.type_only = outer
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = _project_module(alias.name)
            if target is None:
                self._external(alias.name, node.lineno)
                continue
            self._add(target, node.lineno)
            if alias.asname:
                self.bound[alias.asname] = target
            else:  # `import a.b.c` binds `a`
                self.bound[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def _resolve_relative(self, node: ast.ImportFrom) -> str:
        base = self.module.split(".")
        if not _is_package(self.module):
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self._resolve_relative(node) if node.level else (node.module or "")
        if _project_module(source) is None:
            if not node.level:
                self._external(source, node.lineno)
            return
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in modules():  # `from pkg import submodule`
                self._add(sub, node.lineno, alias.name if is_private(alias.name) else None)
                self.bound[alias.asname or alias.name] = sub
            else:
                target = _project_module(source)
                self._add(target, node.lineno, alias.name if is_private(alias.name) else None)

    def visit_Call(self, node: ast.Call) -> None:
        # __import__("daemon.x") / importlib.import_module("daemon.x"): an import all the same
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("__import__", "import_module") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                target = _project_module(arg.value)
                if target:
                    self._add(target, node.lineno)
            elif isinstance(arg, ast.JoinedStr):
                raise AssertionError(f"{self.module}:{node.lineno}: a computed import name hides the "
                                     "import from this test: import the module by name")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # walk `a.b.c._x` down to its root name; flag a private attribute of a bound project module
        chain = []
        cur: ast.expr = node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name) and cur.id in self.bound:
            module = self.bound[cur.id]
            for attr in reversed(chain):
                if is_private(attr):
                    self._add(module, node.lineno, attr)
                    break
                if f"{module}.{attr}" not in modules():
                    break
                module = f"{module}.{attr}"
            return  # the whole chain is read; do not visit its inner attributes again
        self.generic_visit(node)


@functools.cache
def read_all() -> tuple[tuple[Import, ...], tuple[External, ...]]:
    found: list[Import] = []
    external: list[External] = []
    for name, path in modules().items():
        reader = Reader(name)
        reader.visit(ast.parse(path.read_text(), filename=str(path)))
        found += [i for i in reader.imports if i.target != name]
        external += reader.external
    return tuple(found), tuple(external)


def all_imports() -> tuple[Import, ...]:
    return read_all()[0]


def import_time_closure(start: str) -> set[str]:
    """The project modules importing ``start`` runs: its module-level imports, transitively, and
    the packages above each (Python runs ``pkg/__init__.py`` before ``pkg.mod``)."""
    at_import: dict[str, set[str]] = {}
    for i in all_imports():
        if not (i.deferred or i.type_only):
            parts = i.target.split(".")
            at_import.setdefault(i.importer, set()).update(
                name for name in (".".join(parts[:k]) for k in range(1, len(parts) + 1)) if name in modules())
    seen, todo = {start}, [start]
    while todo:
        for target in at_import.get(todo.pop(), set()) - seen:
            seen.add(target)
            todo.append(target)
    return seen


def where(i: Import) -> str:
    return f"{modules()[i.importer].relative_to(REPO)}:{i.line}"


def private_module_ok(importer: str, target: str) -> bool:
    """``pkg._impl`` (or anything below it) imported from inside ``pkg``."""
    parts = target.split(".")
    for k, part in enumerate(parts):
        if is_private(part):
            package = ".".join(parts[:k])
            if not (importer == package or importer.startswith(package + ".")):
                return False
    return True


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for i in all_imports():
        if not i.type_only:
            graph[i.importer].add(i.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per strongly connected component with more than one module (Tarjan, iterative),
    each closed back on its first module: ``a -> b -> c -> a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [cycle_path(graph, set(c)) for c in components]


def cycle_path(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A shortest closed path through the component from its first module (breadth first)."""
    start = min(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")
