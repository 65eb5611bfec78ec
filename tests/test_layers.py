"""Imports point one way, down the layers of the README's architecture section, and never in a circle.

Read from the source (every `import` statement, those inside functions included), so a new
arrow that runs back up fails here before anyone has to draw the graph. Commands mounted by name
(`edge_ttt.commandline.mounted`) are not imports and are not seen, as intended.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_ttt", "export", "firmware_sim", "edge_ttt_demo", "benchmarks")

# edge_ttt's layers, by module prefix; a module not listed is a layer-1 format.
LAYERS = {
    "edge_ttt.cli": 4,
    "edge_ttt.agent": 3,
    "edge_ttt.replay": 3,
    "edge_ttt.monitor": 3,
    "edge_ttt.stream": 2,
    "edge_ttt.adapt": 2,
    "edge_ttt.drift": 2,
}
SIBLINGS = ("edge_ttt.stream", "edge_ttt.adapt", "edge_ttt.drift")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """The project modules that `module` imports (a `from package import name` counts as the
    submodule when there is one)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base]).rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES and name in GRAPH_NODES}


GRAPH_NODES = {_module(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
GRAPH = {
    _module(p): _imports(p, _module(p)) - {_module(p)} for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
}


def _layer(module: str) -> int:
    return next((layer for prefix, layer in LAYERS.items() if _within(module, prefix)), 1)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _edges(source: str) -> list[tuple[str, str]]:
    return [(a, b) for a, targets in GRAPH.items() if _within(a, source) for b in sorted(targets)]


def test_the_graph_reads_the_whole_tree():
    """Guards the tests below: they see the agent's known imports."""
    assert ("edge_ttt.agent.pipeline", "edge_ttt.adapt.engine") in _edges("edge_ttt.agent")
    assert len(GRAPH) > 80


def test_edge_ttt_imports_only_down_its_layers():
    upward = [(a, b) for a, b in _edges("edge_ttt") if _within(b, "edge_ttt") and _layer(b) > _layer(a)]
    assert upward == []


def test_stream_adapt_and_drift_do_not_import_each_other():
    crossing = [
        (a, b)
        for a, b in _edges("edge_ttt")
        for sa in SIBLINGS
        for sb in SIBLINGS
        if sa != sb and _within(a, sa) and _within(b, sb)
    ]
    assert crossing == []


@pytest.mark.parametrize("host", ["export", "firmware_sim", "edge_ttt_demo", "benchmarks"])
def test_the_device_package_imports_no_host_package(host: str):
    assert [(a, b) for a, b in _edges("edge_ttt") if _within(b, host)] == []


def test_only_the_composition_root_is_above_the_simulator_and_nothing_imports_the_demo():
    assert [(a, b) for a, b in _edges("firmware_sim") if _within(b, "edge_ttt.cli")] == []
    demo_users = [(a, b) for a, targets in GRAPH.items() for b in targets if _within(b, "edge_ttt_demo")]
    assert [(a, b) for a, b in demo_users if not _within(a, "edge_ttt_demo")] == []


def test_no_module_imports_itself_through_others():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(GRAPH):
        if start not in state:
            visit(start, [start])
    assert circles == []
