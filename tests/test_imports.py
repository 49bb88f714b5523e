"""The house has no import cycle, no import running back up a floor, and every module imports on its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cnncli"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """The cnncli modules `name` imports: at module level, or anywhere (lazy imports in functions too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from cnncli import fileio` imports the module cnncli.fileio
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_walker_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert "cnncli.fileio" in _imports("cnncli.plots", MODULES["cnncli.plots"], True)


def test_no_import_cycle_at_module_level():
    graph = {name: _imports(name, path, top_level_only=True) for name, path in MODULES.items()}
    assert _cycle(graph) is None


def test_no_import_cycle_even_through_lazy_imports():
    # A lazy import inside a function hides a cycle from Python but not from a reader:
    # the layers still depend on each other both ways.
    graph = {name: _imports(name, path, top_level_only=False) for name, path in MODULES.items()}
    assert _cycle(graph) is None


# The floors of the house, lowest first (docs/architecture.md). Data flows one way:
# config → data and model → train → deploy → insight → tune → the commands. A module
# imports only from its own wing, the wings below it and the ground floor.
FLOORS = ["ground", "config", "data", "model", "train", "deploy", "insight", "tune", "commands"]
GROUND = {"cnncli", "cnncli.errors", "cnncli.fileio", "cnncli.compat", "cnncli.images", "cnncli.faults",
          "cnncli.registry", "cnncli.plots"}


def _wing(module: str) -> str:
    if module in GROUND:
        return "ground"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else "commands"  # cli, summary, templates


def _uphill(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} ({_wing(name)}) -> {dep} ({_wing(dep)})" for name, deps in graph.items() for dep in deps
                  if FLOORS.index(_wing(dep)) > FLOORS.index(_wing(name)))


def test_the_floor_check_sees_an_import_running_up():
    assert _wing("cnncli.model.builder") == "model" and _wing("cnncli.cli") == "commands"
    assert _wing("cnncli.fileio") == "ground" and _wing("cnncli.data") == "data"
    assert _wing("cnncli.summary") == "commands" and _wing("cnncli.commands.training") == "commands"
    assert _uphill({"cnncli.model.builder": {"cnncli.train.loop"}}) == [
        "cnncli.model.builder (model) -> cnncli.train.loop (train)"]
    assert _uphill({"cnncli.train.loop": {"cnncli.model.builder", "cnncli.errors"}}) == []


def test_no_import_runs_back_up_a_floor():
    # Lazy imports count too: an import inside a function is still a dependency.
    graph = {name: _imports(name, path, top_level_only=False) for name, path in MODULES.items()}
    assert {_wing(name) for name in MODULES} == set(FLOORS)
    assert _uphill(graph) == []


# One fresh interpreter imports each module with no cnncli module loaded before it (third-party
# libraries stay loaded: they cannot depend on cnncli's import order, and reloading TensorFlow
# for each of forty modules would take minutes on two cores).
ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "cnncli" or m.startswith("cnncli.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failed.append(f"{name}: {traceback.format_exception_only(exc)[-1].strip()}")
print("\\n".join(failed))
"""


def test_every_module_imports_on_its_own():
    names = [name for name in MODULES if name != "cnncli.__main__"]  # a script: importing it runs the CLI
    assert len(names) > 40
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", ALONE, *names], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_python_dash_m_runs_the_cli():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "cnncli", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout
