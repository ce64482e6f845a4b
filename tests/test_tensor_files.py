"""Torch files are read as plain tensors, with errors that name the file and never advise unpickling."""
import subprocess

import pytest
import torch

from vlgen.core.tensor_files import load_tensor_file


def test_plain_tensor_files_load_on_the_cpu(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.arange(3.0), "step": 7, "nested": [torch.ones(2)]}, path)
    loaded = load_tensor_file(path)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["step"] == 7


def test_pickled_objects_are_refused_without_suggesting_to_unpickle_them(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": subprocess.Popen}, path)
    with pytest.raises(ValueError, match=r"evil.pt is not a plain tensor checkpoint") as refused:
        load_tensor_file(path)
    assert "weights_only=False" not in str(refused.value) and "trust the source" not in str(refused.value)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", None])
def test_truncated_empty_and_foreign_files_name_the_file_without_internal_codes(tmp_path, content):
    path = tmp_path / "broken.pt"
    if content is None:  # a real file cut short
        torch.save({"w": torch.randn(1000)}, path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken.pt is not a readable torch file \(truncated or corrupt\?\)") as bad:
        load_tensor_file(path)
    assert not any(char.isdigit() for char in str(bad.value).replace(str(tmp_path), ""))


def test_a_missing_file_stays_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tensor_file(tmp_path / "nowhere.pt")
