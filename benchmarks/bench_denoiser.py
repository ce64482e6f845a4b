"""Training-step speed and peak memory: DiT-LLaMA vs plain DiT.

One full step = forward, DiT's hybrid DDPM loss, backward, fused AdamW, EMA update (the step of
`run_all.py`, from measure.py), at a chosen precision. Each model runs in its own subprocess so
that peak memory is its own. Prints a table and the DiT-LLaMA / DiT time ratio (target <= 1.10).

    python benchmarks/bench_denoiser.py [--models DiT-LLaMA-S/2 DiT-S/2] [--batch-size 8] [--device cpu]
"""
import argparse
import json
import subprocess
import sys

import torch

from measure import measure_training
from vlgen.commands.allocator import keep_freed_memory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["DiT-LLaMA-S/2", "DiT-S/2"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    keep_freed_memory()

    if args.single:
        result = measure_training(args.models[0], args.device, args.precision, args.batch_size, args.steps, args.warmup,
                                  args.latent_size)
        print(json.dumps(result))
        return
    results = []
    for name in args.models:
        command = [sys.executable, __file__, "--single", "--models", name, "--batch-size", str(args.batch_size),
                   "--latent-size", str(args.latent_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device, "--precision", args.precision]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))

    memory = "CUDA allocated" if args.device.startswith("cuda") else "process peak RSS"
    print(f"training step, batch {args.batch_size} x 4x{args.latent_size}x{args.latent_size}, {args.precision}, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.steps}")
    print(f"{'model':<16} {'step (s)':>9} {'img/s':>8} {'GFLOP/step':>11} {'GFLOP/s':>8} {'peak MiB':>9}  memory")
    for r in results:
        print(f"{r['model']:<16} {r['step_s']:>9.3f} {r['images_per_s']:>8.2f} {r['gflop_per_step']:>11.1f} "
              f"{r['gflop_per_s']:>8.1f} {r['peak_mib']:>9.0f}  {memory}")
    if len(results) >= 2:
        print(f"time ratio {results[0]['model']} / {results[1]['model']}: {results[0]['step_s'] / results[1]['step_s']:.3f}")


if __name__ == "__main__":
    main()
