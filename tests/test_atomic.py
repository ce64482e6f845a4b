"""Atomic writes and output directories: a target is always its old or its new complete version."""
import os

import pytest

from vlgen.core.atomic import atomic_path, temporary_name
from vlgen.core.output_dir import check_output_dir, replaced_dir


class Failure(Exception):
    pass


def entries(folder):
    return sorted(path.name for path in folder.iterdir())


def test_a_file_is_replaced_whole(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".result.txt.")
        temporary.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert entries(tmp_path) == ["result.txt"]


def test_an_error_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(Failure):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise Failure
    assert target.read_text() == "old"
    assert entries(tmp_path) == ["result.txt"]


def test_a_directory_replaces_a_directory(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "new.txt").write_text("new")
    assert entries(target) == ["new.txt"]
    assert entries(tmp_path) == ["run"]  # the previous directory is gone too
    with pytest.raises(Failure):
        with atomic_path(target) as temporary:
            temporary.mkdir()
            (temporary / "partial.txt").write_text("partial")
            raise Failure
    assert entries(target) == ["new.txt"] and entries(tmp_path) == ["run"]


def test_temporary_names_are_unique_and_hidden(tmp_path):
    target = tmp_path / "shard.safetensors"
    names = {temporary_name(target).name for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith(".shard.safetensors.") and name.endswith(".tmp") for name in names)
    assert all(f".{os.getpid()}-" in name for name in names)
    with atomic_path(target) as first, atomic_path(target) as second:  # two writers at once
        assert first != second
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one"  # the last to finish wins, whole
    assert entries(tmp_path) == ["shard.safetensors"]


def test_writing_nothing_is_an_error_and_keeps_the_target(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(target):
            pass
    assert target.read_text() == "old"


@pytest.mark.parametrize("name", [".", ".."])
def test_the_current_or_parent_directory_is_no_target(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="cannot write"):
        with atomic_path(name):
            pass


def test_output_directories_never_replace_the_working_directory_its_parents_or_home(tmp_path, monkeypatch):
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path), os.path.expanduser("~")):
        with pytest.raises(ValueError, match="refusing to write into"):
            check_output_dir(out, overwrite=True)
    assert (work / "keep.txt").read_text() == "keep"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_output_dir(tmp_path / "other")  # not empty, no overwrite
    with replaced_dir(work / "out") as staging:
        staging.mkdir()
        (staging / "model.txt").write_text("model")
    assert entries(work) == ["keep.txt", "out"] and entries(work / "out") == ["model.txt"]
