"""The house rules of ../shared/DESIGN.md, read from the source: layers, no import circles, SQL in its rooms.

Every import counts, including the lazy ones inside functions: a circle through a lazy import is still a
circle for a reader, and only hides from the interpreter until the day both modules load together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The engine's rooms from the bottom up (DESIGN.md's list): a room may import its own modules and
# rooms earlier in this list, never a later one. The ground modules sit below everything.
GROUND = ("engine.config", "engine.errors", "engine.progress", "engine.params", "engine.machine")
ROOMS = ("data", "models", "features", "training", "runs", "jobs", "export", "timing", "cli")

# The only modules that speak SQL: the run store (runs, experiments, metrics, jobs, artifacts) and
# the bottleneck cache, which keeps its own SQLite file.
SQL_MODULES = ("engine.runs.store", "engine.runs.entities", "engine.features.cache")
SQL_CALLS = {"execute", "executemany", "executescript"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    files = [*(ROOT / "engine").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py"), ROOT / "streamlit_app.py"]
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in files}


SOURCES = _sources()


def _imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the tree, lazy ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from engine.pkg import module` depends on that module, not only on the package.
            found += [
                (node.lineno, f"{node.module}.{alias.name}")
                for alias in node.names
                if f"{node.module}.{alias.name}" in SOURCES
            ]
    return found


def _project_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in SOURCES}
    for name, (_, tree) in SOURCES.items():
        for _, target in _imports(tree):
            if target in SOURCES and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _room(module: str) -> int | None:
    """Position of an engine module's room in ROOMS (-1 for the ground), None outside the engine."""
    if module in GROUND or module == "engine":
        return -1
    parts = module.split(".")
    if parts[0] != "engine" or len(parts) < 2:
        return None
    return ROOMS.index(parts[1]) if parts[1] in ROOMS else None


def test_no_import_circles_among_project_modules():
    assert _cycles(_project_graph()) == []


def test_every_engine_module_sits_in_a_room():
    homeless = [m for m in SOURCES if m.startswith("engine.") and m != "engine.__main__" and _room(m) is None]
    assert homeless == [], "new rooms belong in DESIGN.md's list and in ROOMS here"


def test_no_room_imports_a_room_above_it():
    upward = []
    for name, (path, tree) in SOURCES.items():
        here = _room(name)
        if here is None:
            continue
        for line, target in _imports(tree):
            there = _room(target)
            if there is not None and there > here:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert upward == []


def test_engine_never_imports_streamlit():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, (path, tree) in SOURCES.items()
        if name.startswith("engine")
        for line, target in _imports(tree)
        if target.split(".")[0] == "streamlit"
    ]
    assert offenders == []


@pytest.mark.parametrize("forbidden", ["tensorflow", "keras", "sqlite3"])
def test_pages_never_import_the_engine_internals(forbidden):
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, (path, tree) in SOURCES.items()
        if not name.startswith("engine")
        for line, target in _imports(tree)
        if target.split(".")[0] == forbidden
    ]
    assert offenders == []


def test_sql_only_in_the_store_and_the_feature_cache():
    offenders = []
    for name, (path, tree) in SOURCES.items():
        if name in SQL_MODULES:
            continue
        offenders += [
            f"{path.relative_to(ROOT)}:{line} imports sqlite3" for line, t in _imports(tree) if t == "sqlite3"
        ]
        offenders += [
            f"{path.relative_to(ROOT)}:{node.lineno} calls .{node.func.attr}()"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SQL_CALLS
        ]
    assert offenders == []


def test_the_rules_can_fail():
    """The checks above find what they look for: a planted circle and a planted SQL call are seen."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    tree = ast.parse("import sqlite3\ndef f(conn):\n    conn.execute('SELECT 1')\n")
    assert (1, "sqlite3") in _imports(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func.attr in SQL_CALLS]
    assert len(calls) == 1
    assert _room("engine.cli.main") > _room("engine.runs.store") > _room("engine.data.images") > -1
