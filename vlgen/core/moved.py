"""Modules that moved in the layered layout, still importable under their earlier names.

Importing an earlier name gives the module at its new place (the same object) with a
FutureWarning that names the new place. The deprecated `python -m vlgen.train` and
`python -m vlgen.sample` entry points are small files of their own (`-m` needs one).
"""
import importlib
import importlib.abc
import importlib.util
import warnings

MOVED = {
    "vlgen.allocator": "vlgen.commands.allocator",
    "vlgen.choices": "vlgen.core.choices",
    "vlgen.cli": "vlgen.commands.cli",
    "vlgen.demo": "vlgen.commands.demo",
    "vlgen.export": "vlgen.commands.export",
    "vlgen.output_dir": "vlgen.core.output_dir",
    "vlgen.tasks.generation_metrics": "vlgen.evaluation.generation_metrics",
    "vlgen.tasks.scenes": "vlgen.data.scenes",
    "vlgen.training.batches": "vlgen.data.batches",
    "vlgen.training.images": "vlgen.data.images",
    "vlgen.training.latents": "vlgen.data.latents",
    "vlgen.training.optimizer": "vlgen.core.optimizer",
    "vlgen.training.shapes": "vlgen.data.shapes",
    "sampling.guidance": "vlgen.core.guidance",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new_name):
        self.new_name = new_name

    def create_module(self, spec):
        return importlib.import_module(self.new_name)

    def exec_module(self, module):
        pass  # the module at its new place is already executed


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the earlier names of MOVED (installed once by the `vlgen` package)."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        warnings.warn(f"{name} has moved to {MOVED[name]}: import it from there", FutureWarning, stacklevel=2)
        return importlib.util.spec_from_loader(name, _Alias(MOVED[name]))
