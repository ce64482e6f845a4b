"""Image sources: a class folder, a Hugging Face dataset (save_to_disk folder, parquet file) and
WebDataset tar shards of the same images give the same tensors; forms are recognised; a missing
optional package names its extra."""
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder

from vlgen.data.images import ImageDataset
from vlgen.data.sources import detect_format, open_source

CLASSES = ["ant", "bee", "cat"]


def same_set_in_every_form(root):
    """The images of a class folder as a save_to_disk dataset, a parquet file and two tar shards,
    in the folder's order (the order of ImageDataset's indices)."""
    import datasets

    folder = write_image_folder(root / "folder", per_class=3, size=(40, 30))
    source = open_source(folder)
    paths = [Path(path) for path, _ in source.samples]
    labels = [label for _, label in source.samples]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    table = datasets.Dataset.from_dict({"image": [str(path) for path in paths], "label": labels}, features=features)
    table.save_to_disk(str(root / "saved"))
    table.to_parquet(str(root / "train.parquet"))
    for shard in range(2):
        with tarfile.open(root / f"shards-{shard:03d}.tar", "w") as archive:
            for index in range(shard * 5, min((shard + 1) * 5, len(paths))):
                for name, data in ((f"{index:06d}.png", paths[index].read_bytes()),
                                   (f"{index:06d}.cls", str(labels[index]).encode())):
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    archive.addfile(member, io.BytesIO(data))
    return {"folder": folder, "saved": root / "saved", "parquet": root / "train.parquet",
            "webdataset": f"{root}/shards-{{000..001}}.tar"}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    return same_set_in_every_form(tmp_path_factory.mktemp("sources"))


def test_the_forms_are_recognised(forms):
    assert {name: detect_format(path) for name, path in forms.items()} == {
        "folder": "folder", "saved": "hf", "parquet": "hf", "webdataset": "webdataset"}
    assert detect_format("ILSVRC/imagenet-1k") == "hf"
    with pytest.raises(FileNotFoundError, match="data /nowhere/at/all does not exist"):
        detect_format("/nowhere/at/all")


def test_every_form_gives_the_same_tensors(forms):
    datasets = {name: ImageDataset(path, 16) for name, path in forms.items()}
    reference = datasets.pop("folder")
    assert reference.class_names == CLASSES and len(reference) == 9
    for name, dataset in datasets.items():
        assert len(dataset) == 9, name
        assert dataset.class_names == (CLASSES if name != "webdataset" else ["0", "1", "2"]), name
        for index in range(9):
            for flip in (False, True):
                expected, got = reference[(index, flip)], dataset[(index, flip)]
                assert torch.equal(got["x"], expected["x"]) and got["y"] == expected["y"], (name, index, flip)


def test_columns_are_chosen_by_name_and_a_wrong_one_is_named(forms):
    with pytest.raises(ValueError, match="has no column 'img' .*--image-column"):
        ImageDataset(forms["parquet"], 16, image_column="img")


def test_a_streamed_dataset_is_read_in_order_and_refused_for_random_access(forms):
    source = open_source(forms["parquet"], streaming=True)
    first = next(iter(source.data))
    image, label = source.decode_row(first, 0)
    assert image.size == (40, 30) and label == 0
    with pytest.raises(ValueError, match="is streamed, which gives images in order only"):
        ImageDataset(forms["parquet"], 16, streaming=True)


@pytest.mark.parametrize("module, extra, path", [("datasets", "hf", "train.parquet"),
                                                 ("braceexpand", "webdataset", "shards-{000..001}.tar")])
def test_a_missing_optional_package_names_its_extra(module, extra, path, forms, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    root = forms["folder"].parent
    with pytest.raises(ImportError, match=f'needs the {module} package: pip install "vlgen\\[{extra}\\]"'):
        open_source(f"{root}/{path}")


def test_a_tar_sample_without_its_class_is_named(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as archive:
        data = np.zeros(4, np.uint8).tobytes()
        member = tarfile.TarInfo("000001.png")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    with pytest.raises(ValueError, match="sample 000001 has an image but no 000001.cls"):
        open_source(tmp_path / "bad.tar")
