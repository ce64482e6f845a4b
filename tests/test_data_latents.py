"""VAE latents: extraction as the scaled posterior, sharding over processes, directory errors."""
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_vae, write_image_folder

from vlgen.data.images import ImageFolderDataset
from vlgen.data.latents import LatentDataset, extract_latents


















def _single_process():
    return SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"), is_main_process=True,
                           wait_for_everyone=lambda: None)


def test_extracted_latents_are_the_scaled_vae_posterior(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2, size=(37, 29))
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
    root = write_image_folder(tmp_path / "data", per_class=3)
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
    root = write_image_folder(tmp_path / "data", per_class=1)
    tiny_vae(tmp_path / "vae")
    extract_latents(_single_process(), root, str(tmp_path / "vae"), tmp_path / "plain", resolution=16, flip=False)
    with pytest.raises(ValueError, match="without mirror images: set data.random_flip=false"):
        LatentDataset(tmp_path / "plain")
    assert LatentDataset(tmp_path / "plain", random_flip=False)[(0, False)]["x"].shape == (2, 4, 8, 8)
    meta = json.loads((tmp_path / "plain" / "meta.json").read_text())
    (tmp_path / "plain" / "meta.json").write_text(json.dumps({**meta, "count": 5}))
    with pytest.raises(ValueError, match="2 of 5 images have no latents"):
        LatentDataset(tmp_path / "plain", random_flip=False)
