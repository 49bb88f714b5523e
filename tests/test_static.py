"""Public functions in cnncli/ are typed (every parameter and the return) and say what they do on their first line.

A module-level function or a public class's method whose name does not start
with `_` is public. Ruff checks that each has a docstring (D102, D103); ruff's
ANN rules would also demand annotations on private helpers, so this walks the
AST instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnncli"


def _public_functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item


def _untyped(function: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    if method and positional and not any(isinstance(d, ast.Name) and d.id == "staticmethod"
                                         for d in function.decorator_list):
        positional = positional[1:]  # self or cls
    missing = [a.arg for a in (*positional, *args.kwonlyargs) if a.annotation is None]
    missing += [f"*{a.arg}" for a in (args.vararg,) if a is not None and a.annotation is None]
    missing += [f"**{a.arg}" for a in (args.kwarg,) if a is not None and a.annotation is None]
    if function.returns is None:
        missing.append("return")
    return missing


def _findings() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name, function in _public_functions(tree):
            missing = _untyped(function, method="." in name)
            if missing:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{function.lineno} {name}: {', '.join(missing)}")
    return found


def test_public_functions_are_annotated():
    assert _findings() == []


def test_public_docstrings_start_with_their_summary():
    blank = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, function in _public_functions(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            doc = ast.get_docstring(function, clean=False)
            if doc is not None and not doc.split("\n")[0].strip():
                blank.append(f"{path.relative_to(PACKAGE.parent)}:{function.lineno} {name}")
    assert blank == []


@pytest.mark.parametrize("source, expected", [
    ("def f(x): pass", ["f: x, return"]),
    ("def f(x: int) -> int: pass", []),
    ("def _f(x): pass", []),
    ("class A:\n    def m(self, y): pass\n    def _p(self, z): pass", ["A.m: y, return"]),
    ("class A:\n    @staticmethod\n    def m(y) -> None: pass", ["A.m: y"]),
    ("class _A:\n    def m(self, y): pass", []),
    ("def f(*a, **k) -> None: pass", ["f: *a, **k"]),
])
def test_the_walk_finds_what_it_should(source, expected):
    tree = ast.parse(source)
    assert [f"{name}: {', '.join(m)}" for name, fn in _public_functions(tree)
            if (m := _untyped(fn, method="." in name))] == expected
