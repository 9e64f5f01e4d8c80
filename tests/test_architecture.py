"""The import graph of compactobs/ keeps ARCHITECTURE.md's arrows: no circle, no arrow pointing backwards.

The graph is read from the source with `ast`, not from `sys.modules`: an import inside a function or under
`TYPE_CHECKING` is an arrow too, though it runs late or never (a circle hidden in a function is still a
circle in the design, and the next top-level import makes it a real one).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "compactobs"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

Graph = dict[str, set[str]]


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at `root` (a package is its __init__)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def _resolve(target: str, modules: Iterable[str]) -> str | None:
    """The module `target` names: itself, else its nearest enclosing module of the package (None: outside)."""
    known = set(modules)
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph(root: Path, package: str) -> tuple[Graph, dict[str, set[str]]]:
    """(module -> the package's modules it imports, module -> the top-level outside packages it imports).

    Every import statement counts, wherever it is. Relative imports are resolved; `from pkg import name`
    points at `pkg.name` when that is a module, else at `pkg`."""
    files = module_files(root, package)
    graph: Graph = {name: set() for name in files}
    outside: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here.split(".")
                    base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source
                    for alias in node.names
                ]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = _resolve(target, files)
                    if resolved is not None and resolved != name:
                        graph[name].add(resolved)
                else:
                    outside[name].add(target.partition(".")[0])
    return graph, outside


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One circle (a path that ends where it starts) per strongly connected component of `graph` that has
    one."""
    return [_circle_in(component, graph) for component in components(graph)]


def components(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of `graph` with more than one module: each holds circles.
    Tarjan's algorithm, iterative (no recursion limit to mind)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = []
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph[start]))))
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _circle_in(component: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest circle through the component's first member (by name), found breadth first."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for successor in sorted(graph[node] & component):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no circle in the component {sorted(component)}")


GRAPH, OUTSIDE = import_graph(ROOT, PACKAGE)


def _in(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _p(*names: str) -> tuple[str, ...]:
    return tuple(f"{PACKAGE}.{name}" for name in names)


def _arrows_from(prefixes: tuple[str, ...]) -> list[tuple[str, str]]:
    return sorted(
        (source, target) for source, targets in GRAPH.items() if _in(source, *prefixes) for target in targets
    )


# --- the test of the tests: a package with a circle fails, one without passes -----------------------------


def _write_package(root: Path, files: Mapping[str, str]) -> Path:
    package = root / "pkg"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


def test_a_circle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "def late():\n    from .sub import c\n",
            "sub/__init__.py": "",
            "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import thing\n",
            "d.py": "import pkg.a\nimport json\n",
        },
    )
    graph, outside = import_graph(package, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}  # `from pkg import b`: the submodule, not the package
    assert graph["pkg.b"] == {"pkg.sub.c"}  # relative, inside a function
    assert graph["pkg.sub.c"] == {"pkg.a"}  # two levels up, under TYPE_CHECKING
    assert outside["pkg.d"] == {"json"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_a_package_without_circles_passes(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {"__init__.py": "from pkg.a import x\n", "a.py": "from pkg import b\nx = 1\n", "b.py": "import os\n"},
    )
    graph, _ = import_graph(package, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert cycles(graph) == []


# --- compactobs -------------------------------------------------------------------------------------------


def test_the_graph_is_read() -> None:
    # Guards the tests below against passing on an empty or mis-resolved graph.
    assert len(GRAPH) > 80
    assert f"{PACKAGE}.store" in GRAPH[f"{PACKAGE}.store.reprice"]


def test_no_import_circle() -> None:
    found = [
        f"{' -> '.join(_circle_in(component, GRAPH))} (all of: {', '.join(sorted(component))})"
        for component in components(GRAPH)
    ]
    assert not found, "import circles:\n" + "\n".join(found)


LEAVES = _p("errors", "semconv", "untrusted", "platforms", "_words", "_version", "configfile", "_types")


def test_leaves_import_nothing_of_compactobs_but_errors_and_types() -> None:
    # `_types` names types only: a leaf may use them (under TYPE_CHECKING: `import compactobs` stays lean).
    wrong = [(s, t) for s, t in _arrows_from(LEAVES) if t not in (f"{PACKAGE}.errors", f"{PACKAGE}._types")]
    assert not wrong, wrong
    assert GRAPH[f"{PACKAGE}.errors"] == set()
    assert GRAPH[f"{PACKAGE}._types"] == set()


def test_pure_accounting_imports_only_leaves_and_itself() -> None:
    # rules.py's SQL side reads the `calls` table's columns (billed_tokens_sql), inside the function.
    allowed = (*LEAVES, *_p("usage", "pricing", "rules"))
    wrong = [
        (s, t)
        for s, t in _arrows_from(_p("usage", "pricing", "rules"))
        if not _in(t, *allowed) and (s, t) != (f"{PACKAGE}.rules", f"{PACKAGE}.store.models")
    ]
    assert not wrong, wrong


def test_only_guard_store_imports_the_store() -> None:
    wrong = [
        (s, t) for s, t in _arrows_from(_p("guard")) if _in(t, *_p("store")) and s != f"{PACKAGE}.guard.store"
    ]
    assert not wrong, wrong
    assert not [
        (s, t) for s, t in _arrows_from(_p("guard")) if _in(t, *_p("instrument", "recorder", "runtime"))
    ]


def test_instrument_never_touches_the_database() -> None:
    # The instrumentor is the entry point `opentelemetry-instrument` loads: it calls the runtime's setup.
    entry_point = (f"{PACKAGE}.instrument.instrumentor", f"{PACKAGE}.runtime")
    wrong = [
        (s, t)
        for s, t in _arrows_from(_p("instrument"))
        if _in(t, *_p("store", "reports", "runtime")) and (s, t) != entry_point
    ]
    assert not wrong, wrong
    sql = sorted(
        m for m, packages in OUTSIDE.items() if _in(m, *_p("instrument")) and "sqlalchemy" in packages
    )
    assert not sql, sql


def test_recording_and_the_ledger_import_no_source_of_spend_nor_the_runtime() -> None:
    wrong = [
        (s, t)
        for s, t in _arrows_from(_p("store", "recorder", "otlp", "_migrations"))
        if _in(t, *_p("instrument", "checkpoint", "runtime", "reports", "cli", "demo", "testing"))
    ]
    assert not wrong, wrong


def test_reports_never_import_recording_nor_the_guard() -> None:
    wrong = [
        (s, t)
        for s, t in _arrows_from(_p("reports"))
        if _in(t, *_p("instrument", "recorder", "runtime", "guard", "lifecycle")) or t == PACKAGE
    ]
    assert not wrong, wrong


REPORTS = ("cost", "cache", "ops", "conversation", "call", "reconcile", "anomalies", "tune")
REPORT_MODULES = _p(*(f"reports.{name}" for name in REPORTS))
"""One module (or package) per report: each assembles Reports from a Source."""
ABOVE_REPORTS = _p("reports.catalog", "reports.forecast", "reports.dashboard", "reports.promql")
"""What runs or compiles several reports: the catalog, the cost report with its forecast, the dashboards."""
UNDER_REPORTS = _p("reports.model", "reports.times", "reports.measures", "reports.sources", "reports.replay")
"""What the report modules read through: engine-free models, measures, sources, recorded conversations."""


def _report_of(module: str) -> str | None:
    return next((report for report in REPORT_MODULES if _in(module, report)), None)


def test_no_report_module_imports_another() -> None:
    # A figure two reports show (the compaction tax, the top-level cost) is a measure or a helper under
    # them, not one report reaching into another.
    wrong = [
        (s, t)
        for s, t in _arrows_from(REPORT_MODULES)
        if _report_of(t) not in (None, _report_of(s)) or _in(t, *ABOVE_REPORTS)
    ]
    assert not wrong, wrong


def test_what_reports_read_through_imports_no_report() -> None:
    # Sources run shapes built from measures; a source importing a report (its statements, its types) is an
    # arrow backwards, and was a circle hidden in a function.
    above = (*REPORT_MODULES, *ABOVE_REPORTS, *_p("reports.render"))
    wrong = [(s, t) for s, t in _arrows_from(UNDER_REPORTS) if _in(t, *above)]
    assert not wrong, wrong


def test_what_reports_read_through_is_layered() -> None:
    # model <- times <- measures <- sources <- replay: each imports only the ones before it.
    layers = [_p(f"reports.{name}") for name in ("model", "times", "measures", "sources", "replay")]
    wrong = [
        (s, t)
        for below, layer in enumerate(layers)
        for s, t in _arrows_from(layer)
        if any(_in(t, *later) for later in layers[below + 1 :])
    ]
    assert not wrong, wrong


def test_nothing_imports_the_cli() -> None:
    faces = _p("cli", "__main__")
    wrong = [(s, t) for s, targets in GRAPH.items() for t in targets if _in(t, *faces) and not _in(s, *faces)]
    assert not wrong, wrong


def test_the_package_face_only_reexports() -> None:
    # `__init__.py` defines nothing but the lazy `__getattr__` (and `__dir__`) of what it re-exports.
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    defined = [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.name not in ("__getattr__", "__dir__")
    ]
    assert defined == []


def test_nothing_inside_imports_the_package_face() -> None:
    # The face re-exports from the modules; a module importing the face would import everything.
    wrong = [
        s for s, targets in GRAPH.items() if PACKAGE in targets and not _in(s, *_p("cli", "demo", "__main__"))
    ]
    assert not wrong, wrong


IMPORTED_WITH_THE_PACKAGE = {
    PACKAGE,
    *_p("_version", "_words", "checkpoint", "configfile", "errors", "platforms", "usage", "otlp"),
    *_p("lifecycle", "runtime"),
    *_p("instrument", "instrument.conversation", "instrument.state"),
}
"""What `import compactobs` loads: the runtime (so that a bare `Middleware()` finds its setup) and
`conversation()`. The guard, the recorder, the store, OpenTelemetry and the SDK come when first used."""


def test_import_compactobs_loads_only_what_instrumenting_needs() -> None:
    code = (
        "import sys, json, compactobs\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('compactobs', 'asyncio', 'opentelemetry', 'anthropic', 'sqlalchemy'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(json.loads(done.stdout)) == IMPORTED_WITH_THE_PACKAGE


def test_the_lazy_names_are_there() -> None:
    # Each public name the package re-exports resolves to what it names (in a fresh process: this one has
    # them all), also after every submodule is imported: a submodule named like a lazy name (`checkpoint`)
    # would replace it on the package.
    code = (
        "import compactobs, importlib, pkgutil\n"
        "for info in pkgutil.walk_packages(compactobs.__path__, 'compactobs.'):\n"
        "    if info.name not in ('compactobs.__main__', 'compactobs._migrations.env'):\n"
        "        importlib.import_module(info.name)\n"
        "import types\n"
        "for name in compactobs.__all__:\n"
        "    assert not isinstance(getattr(compactobs, name), types.ModuleType), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":  # print the graph's circles: python tests/test_architecture.py
    for circle in cycles(GRAPH):
        print(" -> ".join(circle))
    sys.exit(pytest.main([__file__, "-q", "-p", "no:randomly", "-n0"]))
