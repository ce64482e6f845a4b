"""vlgen's DiT-LLaMA training step against the official VisionLLaMA code's, taking turns in one
process (both see the same machine state), with an optional profile of where each spends its time.

    git clone https://github.com/Meituan-AutoML/VisionLLaMA   # the official code; needs timm 0.9 (pip install timm==0.9.16)
    python benchmarks/bench_official.py --official VisionLLaMA/dit --profile

The official side is its own `dit/models.py` (DiTLLaMA), `dit/diffusion` (DiT's Gaussian diffusion)
and the step of its `dit/train.py`: training_losses, backward, torch's AdamW, its update_ema. The
vlgen side is benchmarks/measure.py's training step (vlgen's model, diffusion, fused AdamW, EMA).
Both use the same size, batch, timesteps and latents.
"""
import argparse
import importlib
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from measure import seconds, training_step
from vlgen.models.sizes import TRANSFORMER_SIZES


def official_step(directory, size, patch, precision, batch_size, device):
    """One step of the official dit/train.py loop around its DiTLLaMA, on random latents."""
    sys.path.insert(0, str(directory))
    models = importlib.import_module("models")
    diffusion_module = importlib.import_module("diffusion")
    update_ema = importlib.import_module("train").update_ema
    torch.manual_seed(0)
    widths = TRANSFORMER_SIZES[size]
    model = models.DiTLLaMA(input_size=32, patch_size=patch, depth=widths["depth"], hidden_size=widths["hidden_size"],
                            num_heads=widths["num_heads"]).to(device).train()
    ema = models.DiTLLaMA(input_size=32, patch_size=patch, depth=widths["depth"], hidden_size=widths["hidden_size"],
                          num_heads=widths["num_heads"]).to(device).requires_grad_(False)
    diffusion = diffusion_module.create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    x = torch.randn(batch_size, 4, 32, 32, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    autocast = torch.autocast(str(device).split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        t = torch.randint(0, diffusion.num_timesteps, (batch_size,), device=device)
        with autocast:
            loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ema, model)

    return step


def top_ops(step, count):
    """The ops of two steps with the most self CPU time, as (name, ms per step)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    totals = sorted(prof.key_averages(), key=lambda event: -event.self_cpu_time_total)[:count]
    return [(event.key, event.self_cpu_time_total / 2e3) for event in totals]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="the dit/ folder of a VisionLLaMA checkout")
    parser.add_argument("--size", default="S", choices=list(TRANSFORMER_SIZES))
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each side (default 8)")
    parser.add_argument("--profile", action="store_true", help="also print each side's most expensive ops")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    name = f"DiT-LLaMA-{args.size}/{args.patch}"
    sides = {"official": official_step(Path(args.official), args.size, args.patch, args.precision, args.batch_size,
                                       args.device),
             "vlgen": training_step(name, args.device, "bf16" if args.precision == "bf16" else "fp32",
                                    args.batch_size)}
    for step in sides.values():  # warm-up
        step()
    times = {side: [] for side in sides}
    for _ in range(args.steps):
        for side, step in sides.items():
            times[side].append(seconds(step, args.device))
    medians = {side: statistics.median(values) for side, values in times.items()}
    print(f"{name}, batch {args.batch_size}, {args.precision if args.precision != 'no' else 'fp32'}, {args.device}, "
          f"{args.steps} steps each, taking turns")
    for side, value in medians.items():
        print(f"  {side:<9} {value:.3f} s/step  (all: {' '.join(f'{v:.3f}' for v in times[side])})")
    print(f"  vlgen / official: {medians['vlgen'] / medians['official']:.3f}")
    if args.profile:
        for side, step in sides.items():
            print(f"\n{side}: self CPU time per step")
            for key, ms in top_ops(step, 15):
                print(f"  {ms:9.1f} ms  {key}")


if __name__ == "__main__":
    main()
