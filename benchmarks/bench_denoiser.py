"""Training-step speed and peak memory: DiT-LLaMA vs plain DiT.

One full step = forward, MSE loss, backward, AdamW. Each model runs in its own subprocess so that
peak memory is its own. Prints a table and the DiT-LLaMA / DiT time ratio (target <= 1.10).

    python benchmarks/bench_denoiser.py [--models DiT-LLaMA-S/2 DiT-S/2] [--batch-size 8] [--device cpu]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vlgen.commands.allocator import keep_freed_memory
from vlgen.models import create_model
from vlgen.core.optimizer import create_adamw


def measure(name, batch_size, latent_size, steps, warmup, device):
    torch.manual_seed(0)
    model = create_model(name, sample_size=latent_size).to(device).train()
    optimizer = create_adamw(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 4, latent_size, latent_size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)

    def step():
        t = torch.randint(0, 1000, (batch_size,), device=device)
        out = model(x, t, y)
        loss = F.mse_loss(out, torch.randn_like(out))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": name,
        "step_s": median,
        "images_per_s": batch_size / median,
        "gflop_per_step": counter.get_total_flops() / 1e9,
        "gflop_per_s": counter.get_total_flops() / 1e9 / median,
        "peak_mib": peak,
        "memory_kind": "CUDA allocated" if device == "cuda" else f"process peak RSS (after setup {rss_before:.0f})",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["DiT-LLaMA-S/2", "DiT-S/2"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    keep_freed_memory()

    if args.single:
        result = measure(args.models[0], args.batch_size, args.latent_size, args.steps, args.warmup, args.device)
        print(json.dumps(result))
        return
    results = []
    for name in args.models:
        command = [sys.executable, __file__, "--single", "--models", name, "--batch-size", str(args.batch_size),
                   "--latent-size", str(args.latent_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))

    print(f"training step, batch {args.batch_size} x 4x{args.latent_size}x{args.latent_size}, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.steps}")
    print(f"{'model':<16} {'step (s)':>9} {'img/s':>8} {'GFLOP/step':>11} {'GFLOP/s':>8} {'peak MiB':>9}  memory")
    for r in results:
        print(f"{r['model']:<16} {r['step_s']:>9.3f} {r['images_per_s']:>8.2f} {r['gflop_per_step']:>11.1f} "
              f"{r['gflop_per_s']:>8.1f} {r['peak_mib']:>9.0f}  {r['memory_kind']}")
    if len(results) >= 2:
        print(f"time ratio {results[0]['model']} / {results[1]['model']}: {results[0]['step_s'] / results[1]['step_s']:.3f}")


if __name__ == "__main__":
    main()
