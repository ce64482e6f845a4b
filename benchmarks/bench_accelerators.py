"""What each convergence accelerator costs per training step, timed alternating in one process.

Every option is a real training run (vlgen.training.loop.Run: the objective's loss, REPA's when
on, backward, AdamW, EMA) of SiT-LLaMA-S/2 on 32 px shapes (16 x 16 = 256 tokens, as S/2 on
ImageNet-256 latents), batch 8; the options take turns step by step, so all see the same machine,
and each is reported as the median step time and its ratio to the plain run. REPA's encoders have
random weights (only their cost is measured): the small shapes classifier of the study, and a
ViT-B-sized one (VisionLLaMA-B at 224 px, 196 tokens) standing in for DINOv2-B/14 at 224 px
(256 tokens, about 1.3 x its cost).

    python benchmarks/bench_accelerators.py [--repeats 6] [--batch-size 8] [--device cpu]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vlgen.core.threads import apply_thread_policy

apply_thread_policy("auto")  # before torch starts its threads, as the vlgen command does

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from measure import synchronize  # noqa: E402
from vlgen.tasks.classification import create_classifier  # noqa: E402
from vlgen.training import load_config  # noqa: E402
from vlgen.training.loop import Run  # noqa: E402

BASE = ["model.name=SiT-LLaMA-S/2", "model.hidden_size=null", "model.depth=null", "model.num_heads=null",
        "objective.kind=flow", "data.kind=shapes", "data.resolution=32",
        "data.num_samples=64", "data.num_workers=0", "logging.tracker=null", 'train.mixed_precision="no"']


def options(encoders):
    """(label, config values) of the plain run and of each option on its own."""
    return [("plain", []),
            ("RMSNorm", ["model.norm=rmsnorm"]),
            ("QK-norm", ["model.qk_norm=true"]),
            ("logit-normal times", ["objective.time_sampling=logit-normal"]),
            ("REPA, shapes classifier encoder", [f"repa.encoder={encoders['small']}", "repa.block=4"]),
            ("REPA, ViT-B-sized encoder", [f"repa.encoder={encoders['base']}", "repa.block=4"])]


def write_encoders(root):
    """Random-weight classifier directories: the study's shapes encoder and a ViT-B-sized one."""
    small, base = Path(root) / "small", Path(root) / "base"
    create_classifier("S", 10, image_size=32, patch_size=2, hidden_size=96, depth=3, num_heads=6).save_pretrained(small)
    create_classifier("B", 10, image_size=224, patch_size=16).save_pretrained(base)
    return {"small": str(small), "base": str(base)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="timed steps of each option (default 6)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision="no")
    with tempfile.TemporaryDirectory() as scratch:
        runs = []
        for label, values in options(write_encoders(scratch)):
            config = load_config(None, [*BASE, f"train.global_batch_size={args.batch_size}",
                                        f"logging.output_dir={scratch}/{len(runs)}", *values])
            run = Run(config, accelerator)
            batch = next(iter(run.loader()))
            runs.append((label, run, batch))
            for _ in range(2):  # warm-up: first-call allocations, the optimizer's state
                run.train_step(batch)
        times = {label: [] for label, _, _ in runs}
        for round_ in range(args.repeats):
            order = runs if round_ % 2 == 0 else runs[::-1]  # no option always follows the same one
            for label, run, batch in order:
                synchronize(accelerator.device)
                started = time.perf_counter()
                run.train_step(batch)
                synchronize(accelerator.device)
                times[label].append(time.perf_counter() - started)

    plain = statistics.median(times["plain"])
    print(f"training step of SiT-LLaMA-S/2, batch {args.batch_size} x 3x32x32 (256 tokens), fp32, {accelerator.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} alternating steps")
    print(f"{'option':<34} {'step (s)':>9} {'x plain':>8}")
    for label, measured in times.items():
        median = statistics.median(measured)
        print(f"{label:<34} {median:>9.3f} {median / plain:>8.3f}")


if __name__ == "__main__":
    main()
