"""The layer rule of the design: imports only go downwards, and the import graph is acyclic."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each source folder and the package it installs as (pyproject.toml's package-dir).
FOLDERS = {"vlgen": "vlgen", "pipelines": "vlgen.pipelines", "sampling": "vlgen.sampling"}

# The layers, bottom to top (README, "Layout"). A module may import its own layer and the layers of
# lower rank; layers of equal rank do not import each other. The package root `vlgen` holds only
# __init__ (which installs the earlier names of moved modules): every other module belongs to a
# named layer.
LAYERS = {
    "vlgen.core": 0,  # option checks, atomic writes, guidance over denoise(x, t, y), the fused optimizer
    "vlgen": 1,  # the package root
    "vlgen.models": 1,  # denoisers, backbones, VAE loading
    "vlgen.data": 2,  # shapes, scenes, image folders, latents, batch plans
    "vlgen.diffusion": 2,  # the DDPM objective
    "vlgen.transport": 2,  # the flow-matching objective
    "vlgen.evaluation": 2,  # FID and the judge's generation metrics
    "vlgen.objectives": 3,  # the interface both objectives implement, built from settings
    "vlgen.sampling": 3,  # samplers over denoise(x, t, **cond)
    "vlgen.tasks": 3,  # perception heads and their training, frozen encoders for REPA
    "vlgen.training": 4,  # the accelerate training loop
    "vlgen.pipelines": 4,  # diffusers pipelines
    "vlgen.commands": 5,  # the `vlgen` command and its subcommands
    "vlgen.__main__": 6,  # `python -m vlgen`
}


def _modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _layer(module):
    """The most specific layer holding module; the root layer holds the bare package name only."""
    matches = [name for name in LAYERS if module == name or (module.startswith(name + ".") and name != "vlgen")]
    return max(matches, key=len) if matches else None


def _violation(module, imported):
    """Why module may not import imported, or None when it may."""
    own, target = _layer(module), _layer(imported)
    if own is None:
        return f"{module} belongs to no layer: add it to LAYERS"
    if target is None:
        return f"{module} imports {imported}, which belongs to no layer"
    if target != own and LAYERS[target] >= LAYERS[own]:
        return f"{module} ({own}, rank {LAYERS[own]}) may not import {imported} ({target}, rank {LAYERS[target]})"
    return None


def _project_imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use absolute imports"
            names = [node.module]
        else:
            continue
        yield from (name for name in names if name.split(".")[0] in FOLDERS)


MODULES = dict(_modules())


@pytest.mark.parametrize("module", list(MODULES))
def test_imports_only_go_downwards(module):
    assert _layer(module) is not None, f"{module} belongs to no layer: add it to LAYERS"
    problems = [_violation(module, imported) for imported in _project_imports(MODULES[module])]
    assert not [p for p in problems if p], problems


@pytest.mark.parametrize("module, imported", [
    ("vlgen.models.denoiser", "vlgen.data.shapes"),  # upwards
    ("vlgen.diffusion.gaussian", "vlgen.transport.paths"),  # sideways, between layers of one rank
    ("vlgen.sampling.ddpm", "vlgen.pipelines.base"),
    ("vlgen.pipelines.base", "pipelines.samplers"),  # a top-level `pipelines` is not vlgen's
    ("vlgen.core.atomic", "vlgen.models"),
    ("vlgen.helpers", "vlgen.core.choices"),  # a module at the package root belongs to no layer
])
def test_the_rule_refuses_imports_against_the_layers(module, imported):
    assert _violation(module, imported) is not None


def test_the_rule_allows_imports_downwards_and_within_a_layer():
    assert _violation("vlgen.pipelines.base", "vlgen.sampling.noise") is None
    assert _violation("vlgen.training.loop", "vlgen.data.batches") is None
    assert _violation("vlgen.data.latents", "vlgen.data.images") is None


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
