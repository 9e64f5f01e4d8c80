"""`Any` only where the outside world is untyped, and named there (issue 28, item 6).

compactobs/_types.py names the values that come from outside loosely typed (JSON, the SDK's objects,
SQLAlchemy expressions whose Python type it does not track, database values). Everywhere else a bare
`Any` is a value not typed yet: this test counts them and fails when the count grows. When you type some,
lower CEILING to the new count (the failure message prints it).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compactobs"

ALLOWED: dict[str, str] = {
    # The one place the names are defined (each `Any` there is documented).
    "_types.py": "the named aliases themselves",
    # Overrides of SQLAlchemy's compiler visitors: their signatures are SQLAlchemy's, `**kw: Any` and all.
    "reports/sources/clickhouse/dialect.py": "SQLAlchemy compiler overrides",
    # protobuf ships no types: the OTLP messages `collect` decodes are read field by field.
    "collect/decode.py": "protobuf messages (untyped)",
}
"""Modules (relative to compactobs/) whose `Any` is not counted: where the outside is untyped throughout."""

CEILING = 211
"""The bare `Any` left in compactobs outside ALLOWED. Before issue 28's item 6: 705 (733 counting ALLOWED)."""


def _annotation_strings(tree: ast.AST) -> list[ast.AST]:
    """The expressions inside string annotations ("dict[str, Any]"), parsed: an `Any` there counts too."""
    found: list[ast.AST] = []
    annotations: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            annotations += [a.annotation for a in every if a.annotation is not None]
            if node.returns is not None:
                annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    for annotation in annotations:
        for inner in ast.walk(annotation):
            if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                try:
                    found.append(ast.parse(inner.value, mode="eval"))
                except SyntaxError:
                    continue  # a string that is not an expression (a Literal's value)
    return found


def any_uses(source: str) -> int:
    """How many times `source` uses `Any` (`Any`, `typing.Any`, in string annotations too); the import that
    brings the name in is not a use."""
    tree = ast.parse(source)
    count = 0
    for root in [tree, *_annotation_strings(tree)]:
        for node in ast.walk(root):
            named = isinstance(node, ast.Name) and node.id == "Any"
            if named or (isinstance(node, ast.Attribute) and node.attr == "Any"):
                count += 1
    return count


def counts() -> dict[str, int]:
    """Module (relative to compactobs/) -> its bare `Any` uses, for every module that has some."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        n = any_uses(path.read_text(encoding="utf-8"))
        if n:
            found[path.relative_to(PACKAGE).as_posix()] = n
    return found


def test_the_counter_counts_uses_not_imports() -> None:
    source = (
        "from typing import Any\n"  # not a use
        "import typing\n"
        "x: Any = 1\n"  # 1
        "def f(a: 'dict[str, Any]', b: typing.Any) -> list[Any]: ...\n"  # 3
        "y: 'Literal[\"not Any\"]'\n"  # a string, not the name: 0
    )
    assert any_uses(source) == 4


def test_the_allowed_modules_exist() -> None:
    missing = [name for name in ALLOWED if not (PACKAGE / name).is_file()]
    assert not missing, f"ALLOWED names modules that are gone: {missing}"


def test_bare_any_does_not_grow() -> None:
    found = {name: n for name, n in counts().items() if name not in ALLOWED}
    total = sum(found.values())
    worst = ", ".join(f"{name} {n}" for name, n in sorted(found.items(), key=lambda item: -item[1])[:10])
    assert total <= CEILING, (
        f"{total} bare `Any` outside compactobs/_types.py and ALLOWED, more than CEILING = {CEILING}: type "
        f"the new ones, or name what comes from outside untyped in compactobs/_types.py. Most: {worst}"
    )
    if total < CEILING:  # not a failure: a reminder that the ceiling can come down
        print(f"bare Any: {total}, CEILING {CEILING}: lower it")
