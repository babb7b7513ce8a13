"""The package layout's rules, read from the source: what each package may import, no I/O in
the maths, and no import cycles. A new import that breaks a rule fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hvae"

# hvae packages/modules each may import (besides itself). cli, commands and stages wire
# everything together and are not listed.
ALLOWED = {
    "model": set(),
    "evaluation": {"model"},
    "data": {"errors"},
    "training": {"model", "evaluation", "config", "errors", "atomic", "interrupts"},
    "serving": {"model", "evaluation", "artifacts", "extras", "errors"},
    "tracking": {
        "errors",
        "atomic",
        "paths",
        "artifacts",
        "extras",
        "config",
        "serving",
        "reporting",
    },
    "reporting": {"serving", "evaluation"},
    "artifacts": {"atomic", "errors", "model"},
    "extras": {"atomic", "errors", "evaluation"},
    "config": {"errors"},
    "atomic": set(),
    "errors": set(),
    "paths": set(),
    "logs": set(),
    "progress": {"interrupts"},
    "interrupts": set(),
}
# Third-party and standard modules that mean I/O, tracking or plotting: not in the maths.
NO_IO = {"mlflow", "pandas", "matplotlib", "h5py", "json", "os", "pathlib", "shutil", "yaml"}
PURE = ("model", "evaluation")


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(SRC.rglob("*.py"))
    }


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names `path` imports (`from hvae import x` counts as hvae.x)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "hvae" or node.module.startswith("hvae."):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _unit(module: str) -> str:
    """hvae.training.fit -> training; hvae.config -> config."""
    return module.split(".")[1] if module.count(".") >= 1 else module


@pytest.mark.parametrize("module", sorted(m for m in _modules() if _unit(m) in ALLOWED))
def test_each_package_imports_only_what_its_docstring_allows(module: str) -> None:
    unit = _unit(module)
    used = {
        _unit(name)
        for name in _imports(_modules()[module])
        if name.startswith("hvae.") and _unit(name) != unit
    }
    assert used <= ALLOWED[unit], f"{module} imports {sorted(used - ALLOWED[unit])}"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if _unit(m) in PURE))
def test_model_and_evaluation_do_no_io(module: str) -> None:
    path = _modules()[module]
    roots = {name.split(".")[0] for name in _imports(path)}
    assert not roots & NO_IO, f"{module} imports {sorted(roots & NO_IO)}"
    calls = {
        node.func.id
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not calls & {"open", "print", "input"}, f"{module} calls {calls & {'open', 'print'}}"


def test_every_package_opens_with_a_docstring() -> None:
    for init in SRC.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(SRC.parent)} has no docstring"


def test_no_import_cycles_at_module_level() -> None:
    modules = _modules()
    graph = {
        name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
        for name, path in modules.items()
    }
    # A package imports its own __init__ first, so an edge to a parent package is no cycle.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_rules_see_the_real_tree() -> None:
    """The checks above would pass vacuously on a renamed folder."""
    units = {_unit(m) for m in _modules()}
    assert {"model", "evaluation", "training", "tracking", "serving", "stages"} <= units
    assert "hvae.model.hvae" in _modules()
    assert "hvae.model" in _imports(_modules()["hvae.evaluation.bounds"])
