"""The layer rule of the design: imports only go downwards, and the import graph is acyclic."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlgen", "pipelines", "sampling")

# Higher rank may import lower rank; equal rank only within the same layer.
LAYERS = {
    "vlgen": 0,  # the package root
    "vlgen.models": 1,
    "vlgen.diffusion": 2,
    "vlgen.transport": 2,
    "vlgen.evaluation": 2,
    "vlgen.training": 3,
    "sampling": 3,
    "pipelines": 4,
    "vlgen.tasks": 4,  # perception heads and their training: models plus the training data
    "vlgen.train": 5,
    "vlgen.sample": 5,
    "vlgen.export": 5,
    "vlgen.demo": 6,  # runs the entry points above (training, export) one after another
    "vlgen.cli": 7,  # the `vlgen` command dispatches to the entry modules above
    "vlgen.__main__": 8,
}


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _layer(module):
    matches = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return max(matches, key=len) if matches else None


def _project_imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use absolute imports"
            names = [node.module]
        else:
            continue
        yield from (name for name in names if name.split(".")[0] in PACKAGES)


MODULES = dict(_modules())


@pytest.mark.parametrize("module", list(MODULES))
def test_imports_only_go_downwards(module):
    own = _layer(module)
    assert own is not None, f"{module} belongs to no layer: add it to LAYERS"
    for imported in _project_imports(MODULES[module]):
        target = _layer(imported)
        assert target is not None, f"{module} imports {imported}, which belongs to no layer"
        assert target == own or LAYERS[target] < LAYERS[own], f"{module} ({own}) may not import {imported} ({target})"


def test_import_graph_is_acyclic():
    graph = {m: {i for i in _project_imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(trail + [node])
        state[node] = "open"
        for nxt in graph[node]:
            visit(nxt, trail + [node])
        state[node] = "done"

    for module in graph:
        visit(module, [])
