"""Image folders: ADM's centre crop, classes and labels, flips, unreadable files."""
import pytest
import torch
from conftest import write_image_folder
from PIL import Image

from vlgen.data.images import ImageDataset, center_crop_arr, pil_to_tensor


def test_adm_center_crop():
    image = Image.new("RGB", (1200, 700), (0, 0, 0))  # a centred white square of side 300
    image.paste((255, 255, 255), (450, 200, 750, 500))
    crop = center_crop_arr(image, 64)
    assert crop.size == (64, 64)
    x = pil_to_tensor(crop)
    # 700 -> 350 (box halving) -> 64 (bicubic): the square spans 300 * 64/700 = 27.4 px, centred.
    row = x[0, 32] > 0
    columns = torch.nonzero(row).flatten()
    assert 25 <= len(columns) <= 30
    assert abs((columns[0] + columns[-1]).item() / 2 - 31.5) <= 1
    assert center_crop_arr(Image.new("RGB", (20, 50)), 64).size == (64, 64)  # small images are upscaled


def test_image_folder_classes_labels_and_flip(tmp_path):
    dataset = ImageDataset(write_image_folder(tmp_path / "data"), 16)
    assert dataset.class_names == ["ant", "bee", "cat"] and len(dataset) == 9
    item = dataset[(0, False)]
    assert item["x"].shape == (3, 16, 16) and item["y"] == 0 and item["skipped"] == 0
    expected = pil_to_tensor(center_crop_arr(Image.open(tmp_path / "data" / "ant" / "0.png").convert("RGB"), 16))
    assert torch.equal(item["x"], expected)
    assert torch.equal(dataset[(0, True)]["x"], torch.flip(expected, dims=[-1]))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        ImageDataset(tmp_path / "nowhere", 16)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageDataset(tmp_path / "flat", 16)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="has no images"):
        ImageDataset(tmp_path / "empty", 16)


def test_corrupt_image_fails_with_its_path_or_is_skipped_and_counted(tmp_path):
    root = write_image_folder(tmp_path / "data")
    bad = root / "ant" / "1.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(OSError, match=f"cannot read image {bad}.*data.skip_bad=true"):
        ImageDataset(root, 16)[(1, False)]
    dataset = ImageDataset(root, 16, skip_bad=True)
    with pytest.warns(UserWarning, match="skipping cannot read image"):
        item = dataset[(1, False)]
    assert item["skipped"] == 1 and torch.equal(item["x"], dataset[(2, False)]["x"])
