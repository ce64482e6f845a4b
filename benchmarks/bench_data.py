"""Data throughput: the latent loader (images/s that one training process gets from its DataLoader
at the ImageNet recipe's shapes) and latent extraction (images/s through `vlgen extract-latents`
with an SD-VAE-shaped encoder).

    python benchmarks/bench_data.py                  # both, on this machine
    python benchmarks/bench_data.py --only loader

The loader reads a synthetic latent directory (random moments of 4x32x32 latents with their mirror
images, float32, shards of 1024, written with the extraction's own shard writer) through the
training loop's batch plan (global batch 256, random flips) with 0, 1 and 2 workers; an H100
trains DiT-LLaMA-XL/2 at about 400 images/s (the GPU check's target), so one process must deliver
more than that. Extraction encodes random 256x256 PNGs with a randomly initialised AutoencoderKL
of the SD VAE's shape (the weights do not change the cost).
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlgen.data import latents as latents_module
from vlgen.data.batches import GlobalBatches, ProcessBatches
from vlgen.data.latents import LatentDataset, extract_latents, shard_path

TARGET_IMAGES_PER_S = 400


def synthetic_latents(out, count, shard_size=1024):
    """A latent directory of `count` random latents, in extraction's format."""
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for number, start in enumerate(range(0, count, shard_size)):
        n = min(shard_size, count - start)
        parts = [{"moments": torch.randn(n, 2, 4, 32, 32, generator=generator),
                  "moments_flip": torch.randn(n, 2, 4, 32, 32, generator=generator),
                  "labels": torch.randint(0, 1000, (n,)), "indices": torch.arange(start, start + n)}]
        latents_module._write_shard(shard_path(out, number), parts, 0, "float32")
    settings = {"format": latents_module.FORMAT, "data": "synthetic", "vae": "none", "vae_subfolder": None,
                "resolution": 256, "flip": True, "dtype": "float32", "shard_size": shard_size}
    latents_module._finish(out, settings, [str(i) for i in range(1000)], 0.18215, 0.0, None)


def loader_rate(directory, workers, batches=30, global_batch=256):
    dataset = LatentDataset(directory)
    plan = GlobalBatches(len(dataset), global_batch, seed=0, random_flip=True)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=ProcessBatches(plan, 0, batches + 2, 0, 1),
                                         num_workers=workers)
    iterator = iter(loader)
    for _ in range(2):  # workers start, files open
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * global_batch / (time.perf_counter() - start)


def extraction_rate(root, count):
    from accelerate import Accelerator
    from diffusers import AutoencoderKL

    images = root / "images" / "class"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(images / f"{i}.png")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  scaling_factor=0.18215).save_pretrained(root / "vae")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    extract_latents(Accelerator(cpu=device == "cpu"), root / "images", str(root / "vae"), root / "latents",
                    batch_size=16, num_workers=2, progress=False)
    return count / (time.perf_counter() - start), device


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["loader", "extraction"], default=None)
    parser.add_argument("--latents", type=int, default=8192, help="synthetic latents for the loader (default 8192)")
    parser.add_argument("--images", type=int, default=16, help="images to extract (default 16)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.only != "extraction":
            synthetic_latents(scratch / "latents", args.latents)
            for workers in (0, 1, 2):
                rate = loader_rate(scratch / "latents", workers)
                verdict = "meets" if rate >= TARGET_IMAGES_PER_S else "misses"
                print(f"latent loader, {workers} worker(s): {rate:,.0f} images/s ({verdict} the {TARGET_IMAGES_PER_S} "
                      "images/s of one H100)")
        if args.only != "loader":
            rate, device = extraction_rate(scratch / "extraction", args.images)
            print(f"latent extraction (SD-VAE-shaped encoder, 256x256, with mirror images), {device}: "
                  f"{rate:.2f} images/s")


if __name__ == "__main__":
    main()
