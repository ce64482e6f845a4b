"""Inception feature extraction speed: vlgen.evaluation against torch-fidelity on the same folder.

Writes N random 256x256 PNGs, then times (best of --repeats, alternating which goes first,
network construction included) vlgen's extraction (pool + logits + sFID spatial features) and torch_fidelity.calculate_metrics(isc=True), which runs
the same network over the same files. Both decode PNGs with torch-fidelity's worker count. Without
--inception-weights, random weights are used: speed does not depend on their values.

    python benchmarks/bench_fid.py [--num-images 150] [--batch-size 50] [--inception-weights PATH]
"""
import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from PIL import Image

from vlgen.evaluation import InceptionFeatures, open_images
from vlgen.evaluation.inception import save_random_inception_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inception-weights", default=None)
    args = parser.parse_args()
    workers = min(4, 2 * multiprocessing.cpu_count())  # what torch-fidelity uses for folders

    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for index in range(args.num_images):
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{index:05d}.png")
        weights = args.inception_weights or save_random_inception_weights(Path(root) / "random-inception.pth")

        def ours():  # network construction included, as in torch-fidelity's call
            InceptionFeatures("cpu", weights).extract(open_images(folder), batch_size=args.batch_size, num_workers=workers, progress=False)

        def theirs():
            torch_fidelity.calculate_metrics(input1=str(folder), isc=True, batch_size=args.batch_size, cuda=False,
                                             feature_extractor_weights_path=str(weights), cache=False, verbose=False)

        timings = {"vlgen": [], "torch-fidelity": []}
        runs = [("vlgen", ours), ("torch-fidelity", theirs)]
        for repeat in range(args.repeats):
            for name, run in runs[:: 1 if repeat % 2 else -1]:  # alternate who goes first
                start = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - start)

    print(f"{args.num_images} PNGs of 256x256, batch {args.batch_size}, {workers} decode workers, cpu, "
          f"{torch.get_num_threads()} threads")
    rates = {name: args.num_images / min(values) for name, values in timings.items()}
    for name, rate in rates.items():
        print(f"{name:<15} {rate:8.2f} images/s")
    print(f"ratio vlgen / torch-fidelity: {rates['vlgen'] / rates['torch-fidelity']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
