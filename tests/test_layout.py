"""The package's layout: subpackages by role, imports running one way, no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "catsdogs"
# Each layer may import its own and the layers before it, never a later one.
LAYERS = ("core", "data", "models", "tracking", "training", "evaluation", "experiments", "serving")
# The performance tools time data and models; they must not pull in MLflow or training.
SPEED_MAY_IMPORT = {"core", "data", "models", "speed"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every catsdogs module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "catsdogs":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "catsdogs")
    return found


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_every_module_sits_in_a_subpackage_by_role():
    loose = sorted(m for m in MODULES if m != "catsdogs" and _layer(m) is None and m.count(".") == 1
                   and not (PACKAGE / m.split(".")[1]).is_dir())
    assert loose == [], f"modules outside a subpackage: {loose}"
    assert {m.split(".")[1] for m in MODULES if m.count(".") >= 1} == {*LAYERS, "speed"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    layer = _layer(module)
    if layer is None:
        return
    allowed = SPEED_MAY_IMPORT if layer == "speed" else set(LAYERS[: LAYERS.index(layer) + 1])
    wrong = sorted(m for m in GRAPH[module] if _layer(m) not in allowed and _layer(m) is not None)
    assert wrong == [], f"{module} ({layer}) imports {wrong}"


def test_no_import_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt in GRAPH and nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checks_catch_a_cycle_and_a_wrong_way_import(monkeypatch):
    monkeypatch.setitem(GRAPH, "catsdogs.core.config", GRAPH["catsdogs.core.config"] | {"catsdogs.training.loop"})
    with pytest.raises(AssertionError, match="imports"):
        test_imports_run_one_way("catsdogs.core.config")
    monkeypatch.setitem(GRAPH, "catsdogs.training.loop", GRAPH["catsdogs.training.loop"] | {"catsdogs.core.config"})
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()
