"""Modules that moved keep their earlier names, with a warning that names the new place."""
import importlib
import subprocess
import sys

import pytest

from vlgen.core.moved import MOVED


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_an_earlier_name_gives_the_module_at_its_new_place(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match=f"{old} has moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_documented_names_import_from_their_earlier_modules(monkeypatch):
    monkeypatch.delitem(sys.modules, "vlgen.training.shapes", raising=False)
    with pytest.warns(FutureWarning):
        from vlgen.training.shapes import ShapesDataset
    from vlgen.data.shapes import ShapesDataset as moved
    assert ShapesDataset is moved


def test_the_earlier_module_entry_points_still_run_their_commands():
    result = subprocess.run([sys.executable, "-m", "vlgen.train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: vlgen train" in result.stdout
    assert "-m vlgen.train` is deprecated: use `-m vlgen train`" in result.stderr
