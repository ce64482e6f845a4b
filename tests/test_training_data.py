"""Training data: the shapes dataset, class folders with ADM's crop, VAE latents, batch plans."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vlgen.data.batches import GlobalBatches, ProcessBatches, local_slice, step_seed
from vlgen.data.images import ImageFolderDataset, center_crop_arr, pil_to_tensor
from vlgen.data.latents import LatentDataset, extract_latents
from vlgen.data.shapes import BACKGROUND_LEVEL_LIMIT, CLASS_NAMES, MIN_CONTRAST, ShapesDataset


def test_shapes_are_deterministic_balanced_and_any_resolution():
    for resolution in (8, 16, 48):
        dataset = ShapesDataset(resolution, num_samples=30)
        item = dataset[(7, False)]
        assert item["x"].shape == (3, resolution, resolution) and item["y"] == 7
        assert -1 <= item["x"].min() < item["x"].max() <= 1
        assert torch.equal(item["x"], ShapesDataset(resolution, 30)[(7, False)]["x"])
    dataset = ShapesDataset(32, num_samples=100)
    assert [dataset[(i, False)]["y"] for i in range(100)] == [i % 10 for i in range(100)]
    assert len(CLASS_NAMES) == dataset.num_classes == 10
    flipped = dataset[(3, True)]["x"]
    assert torch.equal(flipped, torch.flip(dataset[(3, False)]["x"], dims=[-1]))
    assert not torch.equal(dataset[(3, False)]["x"], ShapesDataset(32, 100, seed=1)[(3, False)]["x"])


def test_shapes_classes_differ_in_their_masks():
    """Each class covers a different mean area fraction pattern: the ten mean masks are distinct."""
    dataset = ShapesDataset(32, num_samples=400)
    masks = torch.zeros(10, 32, 32)
    for i in range(400):
        x = dataset[(i, False)]["x"]
        background = x[:, 0, 0][:, None, None]
        masks[i % 10] += ((x - background).abs().sum(0) > 0.3).float() / 40
    distances = torch.cdist(masks.flatten(1), masks.flatten(1))
    assert distances[~torch.eye(10, dtype=torch.bool)].min() > 1.0


def test_shapes_stand_out_from_dark_backgrounds():
    dataset = ShapesDataset(32, num_samples=50)
    for i in range(50):
        x = (dataset[(i, False)]["x"] + 1) * 255 / 2  # back to 0..255
        background = x[:, 0, 0]  # the corner is outside every shape
        assert (background < BACKGROUND_LEVEL_LIMIT).all(), (i, background)
        assert (x - background[:, None, None]).abs().sum(0).max() >= MIN_CONTRAST - 1e-3  # a pixel fully inside


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


def _image_folder(root, per_class=3, size=(40, 30)):
    for label, name in enumerate(["cat", "ant", "bee"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, (80 * label, 20 * i, 0)).save(root / name / f"{i}.png")
    return root


def test_image_folder_classes_labels_and_flip(tmp_path):
    dataset = ImageFolderDataset(_image_folder(tmp_path / "data"), 16)
    assert dataset.class_names == ["ant", "bee", "cat"] and len(dataset) == 9
    item = dataset[(0, False)]
    assert item["x"].shape == (3, 16, 16) and item["y"] == 0 and item["skipped"] == 0
    expected = pil_to_tensor(center_crop_arr(Image.open(tmp_path / "data" / "ant" / "0.png").convert("RGB"), 16))
    assert torch.equal(item["x"], expected)
    assert torch.equal(dataset[(0, True)]["x"], torch.flip(expected, dims=[-1]))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        ImageFolderDataset(tmp_path / "nowhere", 16)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderDataset(tmp_path / "flat", 16)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="has no images"):
        ImageFolderDataset(tmp_path / "empty", 16)


def test_corrupt_image_fails_with_its_path_or_is_skipped_and_counted(tmp_path):
    root = _image_folder(tmp_path / "data")
    bad = root / "ant" / "1.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(OSError, match=f"cannot read image {bad}.*data.skip_bad=true"):
        ImageFolderDataset(root, 16)[(1, False)]
    dataset = ImageFolderDataset(root, 16, skip_bad=True)
    with pytest.warns(UserWarning, match="skipping cannot read image"):
        item = dataset[(1, False)]
    assert item["skipped"] == 1 and torch.equal(item["x"], dataset[(2, False)]["x"])


def test_global_batches_cover_each_epoch_and_split_over_processes():
    plan = GlobalBatches(dataset_size=12, global_batch_size=4, seed=3, random_flip=True)
    epoch = [index for step in range(3) for index, _ in plan.step_items(step)]
    assert sorted(epoch) == list(range(12))
    second = [index for step in range(3, 6) for index, _ in plan.step_items(step)]
    assert sorted(second) == list(range(12)) and second != epoch
    flips = [flip for step in range(200) for _, flip in plan.step_items(step)]
    assert 0.4 < np.mean(flips) < 0.6
    halves = [list(ProcessBatches(plan, 5, 9, rank, 2)) for rank in range(2)]
    assert [a + b for a, b in zip(*halves)] == [plan.step_items(step) for step in range(5, 9)]
    assert not any(flip for _, flip in GlobalBatches(12, 4, 3, random_flip=False).step_items(0))
    with pytest.raises(ValueError, match="global_batch_size 4 is not divisible by the 3 processes"):
        ProcessBatches(plan, 0, 1, 0, 3)
    assert torch.equal(local_slice(torch.arange(6), 1, 3), torch.tensor([2, 3]))
    assert step_seed(0, 1, 2) != step_seed(0, 2, 1) and step_seed(0, 1, 2) == step_seed(0, 1, 2)


def tiny_vae(path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(path)
    return vae.eval()


def _single_process():
    return SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"), is_main_process=True,
                           wait_for_everyone=lambda: None)


def test_extracted_latents_are_the_scaled_vae_posterior(tmp_path):
    root = _image_folder(tmp_path / "data", per_class=2, size=(37, 29))
    vae = tiny_vae(tmp_path / "vae")
    meta = extract_latents(_single_process(), root, str(tmp_path / "vae"), tmp_path / "latents", resolution=16,
                           batch_size=4)
    assert meta["latent_shape"] == [4, 8, 8] and meta["count"] == 6 and meta["scaling_factor"] == 0.5
    dataset = LatentDataset(tmp_path / "latents")
    assert (dataset.channels, dataset.size, dataset.class_names) == (4, 8, ["ant", "bee", "cat"])
    images = ImageFolderDataset(root, 16)
    for index in range(6):
        image = images[(index, False)]["x"][None]
        with torch.no_grad():
            for flip in (False, True):
                posterior = vae.encode(torch.flip(image, dims=[-1]) if flip else image).latent_dist
                item = dataset[(index, flip)]
                torch.testing.assert_close(item["x"][0], (posterior.mean[0] - 0.1) * 0.5, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(item["x"][1], posterior.std[0] * 0.5, atol=1e-5, rtol=1e-5)
        assert item["y"] == images[(index, False)]["y"]
    with pytest.raises(FileExistsError, match="already holds extracted latents"):
        extract_latents(_single_process(), root, str(tmp_path / "vae"), tmp_path / "latents", resolution=16)


def test_latent_extraction_sharded_over_processes_equals_one_process(tmp_path):
    root = _image_folder(tmp_path / "data", per_class=3)
    tiny_vae(tmp_path / "vae")
    extract_latents(_single_process(), root, str(tmp_path / "vae"), tmp_path / "one", resolution=16, batch_size=2)
    for rank in (1, 0):  # the main process writes meta.json last
        process = SimpleNamespace(process_index=rank, num_processes=2, device=torch.device("cpu"),
                                  is_main_process=rank == 0, wait_for_everyone=lambda: None)
        extract_latents(process, root, str(tmp_path / "vae"), tmp_path / "two", resolution=16, batch_size=2,
                        shard_size=2)
    assert len(list((tmp_path / "two").glob("shard-p001-*.safetensors"))) == 2
    one, two = LatentDataset(tmp_path / "one"), LatentDataset(tmp_path / "two")
    for index in range(9):
        assert torch.equal(one[(index, True)]["x"], two[(index, True)]["x"])
        assert one[(index, True)]["y"] == two[(index, True)]["y"]


def test_latent_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatentDataset(tmp_path / "none")
    (tmp_path / "partial").mkdir()
    with pytest.raises(ValueError, match="no meta.json: not a complete latent directory"):
        LatentDataset(tmp_path / "partial")
    root = _image_folder(tmp_path / "data", per_class=1)
    tiny_vae(tmp_path / "vae")
    extract_latents(_single_process(), root, str(tmp_path / "vae"), tmp_path / "plain", resolution=16, flip=False)
    with pytest.raises(ValueError, match="without mirror images: set data.random_flip=false"):
        LatentDataset(tmp_path / "plain")
    assert LatentDataset(tmp_path / "plain", random_flip=False)[(0, False)]["x"].shape == (2, 4, 8, 8)
    meta = json.loads((tmp_path / "plain" / "meta.json").read_text())
    (tmp_path / "plain" / "meta.json").write_text(json.dumps({**meta, "count": 5}))
    with pytest.raises(ValueError, match="2 of 5 images have no latents"):
        LatentDataset(tmp_path / "plain", random_flip=False)
