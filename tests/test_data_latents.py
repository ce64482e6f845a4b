"""VAE latents: extraction as the scaled posterior, shards numbered by source position (the same on
any number of processes), resume after kill -9, per-channel statistics, the loader reading one
flip variant, directory errors."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from accelerate import Accelerator
from conftest import tiny_vae, two_process_launch, write_image_folder

from vlgen.data.images import ImageDataset
from vlgen.data.latents import LatentDataset, extract_latents

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TESTS = Path(__file__).resolve().parent


def extract(root, vae, out, **options):
    return extract_latents(Accelerator(cpu=True), root, str(vae), out, resolution=16, progress=False,
                           **{"batch_size": 2, **options})


def test_extracted_latents_are_the_scaled_vae_posterior(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2, size=(37, 29))
    vae = tiny_vae(tmp_path / "vae")
    meta = extract(root, tmp_path / "vae", tmp_path / "latents", batch_size=4)
    assert meta["latent_shape"] == [4, 8, 8] and meta["count"] == 6 and meta["scaling_factor"] == 0.5
    dataset = LatentDataset(tmp_path / "latents")
    assert (dataset.channels, dataset.size, dataset.class_names) == (4, 8, ["ant", "bee", "cat"])
    images = ImageDataset(root, 16)
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
        extract(root, tmp_path / "vae", tmp_path / "latents")


def test_channel_statistics_and_the_channel_normalisation(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3)
    tiny_vae(tmp_path / "vae")
    meta = extract(root, tmp_path / "vae", tmp_path / "latents", shard_size=4)
    plain = LatentDataset(tmp_path / "latents")
    means = torch.stack([plain[(i, False)]["x"][0] for i in range(len(plain))]).double()  # (N, C, h, w)
    mean, std = means.mean(dim=(0, 2, 3)), means.std(dim=(0, 2, 3), unbiased=False)
    np.testing.assert_allclose(meta["channel_mean"], mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(meta["channel_std"], std, rtol=1e-6, atol=1e-7)
    normalised = LatentDataset(tmp_path / "latents", latent_norm="channel")
    for index in range(len(plain)):
        raw, item = plain[(index, True)]["x"], normalised[(index, True)]["x"]
        torch.testing.assert_close(item[0], (raw[0] - mean.float()[:, None, None]) / std.float()[:, None, None])
        torch.testing.assert_close(item[1], raw[1] / std.float()[:, None, None])


def test_the_loader_reads_only_the_flip_variant_it_draws(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=1)
    tiny_vae(tmp_path / "vae")
    extract(root, tmp_path / "vae", tmp_path / "latents")
    dataset = LatentDataset(tmp_path / "latents")
    dataset[(0, False)]
    read = []

    class Recording:  # the shard's reader, noting which tensors are sliced
        def __init__(self, handle):
            self.handle = handle

        def get_slice(self, name):
            read.append(name)
            return self.handle.get_slice(name)

    dataset._handles = {number: Recording(handle) for number, handle in dataset._handles.items()}
    dataset[(0, True)], dataset[(0, False)]
    assert read == ["moments_flip", "moments"]
    assert isinstance(dataset.labels, np.ndarray) and isinstance(dataset.file_of, np.ndarray)  # no per-item lists


def test_an_interrupted_extraction_keeps_its_shards_and_finishes_to_the_same_bytes(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3)
    tiny_vae(tmp_path / "vae")
    extract(root, tmp_path / "vae", tmp_path / "whole", shard_size=2)
    extract(root, tmp_path / "vae", tmp_path / "resumed", shard_size=2)
    for name in ("meta.json", "shard-000001.safetensors", "shard-000003.safetensors"):
        (tmp_path / "resumed" / name).unlink()  # what a kill leaves: some shards, no meta.json
    kept = (tmp_path / "resumed" / "shard-000000.safetensors").stat().st_mtime_ns
    extract(root, tmp_path / "vae", tmp_path / "resumed", shard_size=2)
    assert (tmp_path / "resumed" / "shard-000000.safetensors").stat().st_mtime_ns == kept  # not written again
    shards = sorted(path.name for path in (tmp_path / "whole").glob("shard-*"))
    assert shards == sorted(path.name for path in (tmp_path / "resumed").glob("shard-*")) and len(shards) == 5
    for name in shards:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    with pytest.raises(ValueError, match="other settings .*resolution"):
        (tmp_path / "resumed" / "meta.json").unlink()
        extract_latents(Accelerator(cpu=True), root, str(tmp_path / "vae"), tmp_path / "resumed", resolution=24,
                        batch_size=2, shard_size=2, progress=False)


def test_unreadable_images_are_skipped_and_counted_when_asked(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    (root / "bee" / "1.png").write_bytes(b"not a png")
    tiny_vae(tmp_path / "vae")
    with pytest.raises(OSError, match="cannot read image .*bee/1.png"):
        extract(root, tmp_path / "vae", tmp_path / "strict")
    meta = extract(root, tmp_path / "vae", tmp_path / "latents", skip_bad=True)
    assert (meta["count"], meta["skipped"]) == (5, 1)
    assert sorted(int(LatentDataset(tmp_path / "latents").labels[i]) for i in range(5)) == [0, 0, 1, 2, 2]


def test_latent_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatentDataset(tmp_path / "none")
    (tmp_path / "partial").mkdir()
    with pytest.raises(ValueError, match="no meta.json: not a complete latent directory"):
        LatentDataset(tmp_path / "partial")
    root = write_image_folder(tmp_path / "data", per_class=1)
    tiny_vae(tmp_path / "vae")
    extract(root, tmp_path / "vae", tmp_path / "plain", flip=False)
    with pytest.raises(ValueError, match="without mirror images: set data.random_flip=false"):
        LatentDataset(tmp_path / "plain")
    assert LatentDataset(tmp_path / "plain", random_flip=False)[(0, False)]["x"].shape == (2, 4, 8, 8)
    meta = json.loads((tmp_path / "plain" / "meta.json").read_text())
    (tmp_path / "plain" / "meta.json").write_text(json.dumps({**meta, "count": 5}))
    with pytest.raises(ValueError, match="2 of 5 images have no latents"):
        LatentDataset(tmp_path / "plain", random_flip=False)
    (tmp_path / "plain" / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ValueError, match="extracted by an earlier vlgen in another layout: extract it again"):
        LatentDataset(tmp_path / "plain", random_flip=False)


@pytest.mark.slow
def test_a_killed_two_process_extraction_resumes_to_the_shards_of_an_uninterrupted_one(tmp_path):
    """kill -9 of the whole launch between shards; the same launch again keeps what was written and
    finishes. Every shard equals, byte for byte, the one an uninterrupted launch writes, and, up to
    the rounding of other thread counts, the one a single process writes."""
    root = write_image_folder(tmp_path / "data", per_class=4)
    tiny_vae(tmp_path / "vae")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}

    def launch(out, delay):
        return [*two_process_launch(), str(TESTS / "launched_extraction.py"), str(root), str(tmp_path / "vae"),
                str(tmp_path / out), "2", delay]

    result = subprocess.run(launch("straight", "0"), env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = subprocess.Popen(launch("two", "0.5"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "two").glob("shard-*.safetensors"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = [psutil.Process(killed.pid), *psutil.Process(killed.pid).children(recursive=True)]
    for process in processes:  # the launcher and every worker it started, however they are grouped
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    killed.wait()
    written = len(list((tmp_path / "two").glob("shard-*.safetensors")))
    assert 2 <= written < 6 and not (tmp_path / "two" / "meta.json").exists()
    result = subprocess.run(launch("two", "0"), env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(path.name for path in (tmp_path / "straight").glob("shard-*"))
    assert names == sorted(path.name for path in (tmp_path / "two").glob("shard-*")) and len(names) == 6
    for name in names:
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert (tmp_path / "straight" / "meta.json").read_text() == (tmp_path / "two" / "meta.json").read_text()
    extract(root, tmp_path / "vae", tmp_path / "one", shard_size=2)
    one, two = LatentDataset(tmp_path / "one"), LatentDataset(tmp_path / "two")
    for index in range(12):
        torch.testing.assert_close(one[(index, True)]["x"], two[(index, True)]["x"], rtol=1e-5, atol=1e-6)
        assert one[(index, True)]["y"] == two[(index, True)]["y"]
