"""All speed and memory measurements in one table, checked against the performance targets.

    python benchmarks/run_all.py [--device cpu|cuda] [--batch-size 8] [--sample-steps 10]

Rows (each timed configuration runs in its own subprocess, so its peak memory is its own):
- matmul: the machine's measured dense matmul FLOP/s in fp32 and bf16, the physical limit that
  the training rows are compared with.
- train: one full training step of DiT-LLaMA-S/2 and DiT-S/2 on 4x32x32 latents (DDPM hybrid
  loss with learned sigma, backward, AdamW, EMA update), fp32 and bf16 autocast; median step time,
  images/s, model FLOP/s (torch's FLOP counter over the step) and that rate as a fraction of the
  matmul rate of the same precision.
- sample: DDIM of DiT-LLaMA-S/2 without and with classifier-free guidance (fp32), and with
  guidance in bf16 weights (as a pipeline with torch_dtype=torch.bfloat16 runs it).
- fid: Inception feature extraction (pool, logits and sFID features) of in-memory 256x256 images.
- help: `vlgen --help` in a new process (it imports no torch).
- memory: activation memory saved for backward by DiT-LLaMA-XL/2 at batch 32 (256 px, 32x32
  latents) with and without gradient checkpointing, counted exactly on the meta device (shapes
  only; no compute, any machine).
"""
import argparse
import json
import subprocess
import sys

import torch

from measure import measure_training, peak_memory_mib, random_weight_model, seconds, time_calls
from vlgen.commands.allocator import keep_freed_memory

TARGETS = (  # (description, value key, limit, "min" or "max")
    ("fp32 training FLOP/s / fp32 matmul FLOP/s", "train_fp32_fraction", 0.85, "min"),
    ("bf16 step / fp32 step", "bf16_step_ratio", 0.5, "max"),
    ("DiT-LLaMA step / DiT step (fp32)", "llama_dit_ratio", 1.10, "max"),
    ("sampling with CFG / without", "cfg_ratio", 2.1, "max"),
    ("bf16 CFG sampling / fp32 CFG sampling", "bf16_sampling_ratio", 0.5, "max"),
    ("activation memory with / without checkpointing (XL/2, batch 32)", "checkpointing_ratio", 0.5, "max"),
)


def measure_matmul(device, dtype_name, size=2048, repeats=10):
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = time_calls(lambda: a @ b, device, repeats, warmup=2)
    return {"gflop_per_s": 2 * size**3 / min(times) / 1e9}


def measure_sampling(device, guidance, precision, batch_size, num_steps, repeats=2):
    from sampling import classifier_free_guidance, sample_ddim
    from vlgen.diffusion import create_diffusion

    model = random_weight_model("DiT-LLaMA-S/2", device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model.to(dtype)

    def denoise(x, t, y):  # as the pipelines run a torch_dtype model: sampler arithmetic in fp32
        return model(x.to(dtype), t, y).float()

    if guidance:
        denoise = classifier_free_guidance(denoise, 4.0, model.null_class_id, guided_channels=4)
    diffusion = create_diffusion(f"ddim{num_steps}")
    noise = torch.randn(batch_size, 4, 32, 32, device=device)
    labels = torch.randint(0, 1000, (batch_size,), device=device)

    def run():
        with torch.inference_mode():
            sample_ddim(denoise, diffusion, noise, progress=False, y=labels)

    times = time_calls(run, device, repeats)
    return {"batch_s": min(times), "images_per_s": batch_size / min(times), "peak_mib": peak_memory_mib(device)}


def measure_fid(device, num_images=100, batch_size=50, repeats=2):
    import tempfile
    from pathlib import Path

    from vlgen.evaluation import InceptionFeatures
    from vlgen.evaluation.inception import save_random_inception_weights

    with tempfile.TemporaryDirectory() as root:  # random weights: speed does not depend on their values
        features = InceptionFeatures(device, save_random_inception_weights(Path(root) / "inception.pth"))
    images = torch.randint(0, 256, (num_images, 3, 256, 256), dtype=torch.uint8)

    def run():
        for batch in images.split(batch_size):
            features(batch)

    times = time_calls(run, device, repeats)
    return {"images_per_s": num_images / min(times), "peak_mib": peak_memory_mib(device)}


def measure_checkpointing_memory(model_name="DiT-LLaMA-XL/2", batch_size=32):
    """Bytes of the tensors autograd holds for backward after one forward, without and with
    gradient checkpointing. With it, backward recomputes one block at a time, so its peak adds
    about one block's share of the plain activations (plain / depth): counted in."""
    from vlgen.models import create_model

    results = {}
    for checkpointing in (False, True):
        with torch.device("meta"):
            model = create_model(model_name, sample_size=32).train()
            if checkpointing:
                model.enable_gradient_checkpointing()
            x = torch.randn(batch_size, 4, 32, 32)
            t = torch.randint(0, 1000, (batch_size,))
            y = torch.randint(0, 1000, (batch_size,))
        saved = []

        def pack(tensor):
            if not isinstance(tensor, torch.nn.Parameter):
                saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x, t, y)
        results["checkpointing" if checkpointing else "plain"] = sum(saved) / 2**20
    depth = model.config.depth
    return {"plain_mib": results["plain"], "checkpointing_mib": results["checkpointing"] + results["plain"] / depth}


def measure_help(repeats=3):
    """`vlgen --help` as a user waits for it: a new process, best of `repeats`."""
    times = [seconds(lambda: subprocess.run([sys.executable, "-m", "vlgen", "--help"], check=True,
                                            capture_output=True), "cpu") for _ in range(repeats)]
    return {"seconds": min(times)}


MEASUREMENTS = {
    "matmul": lambda a: measure_matmul(a.device, a.dtype),
    "train": lambda a: measure_training(a.model, a.device, a.precision, a.batch_size),
    "sample": lambda a: measure_sampling(a.device, a.guidance, a.precision, a.batch_size, a.sample_steps),
    "fid": lambda a: measure_fid(a.device),
    "memory": lambda a: measure_checkpointing_memory(),
    "help": lambda a: measure_help(),
}


def child(args):
    keep_freed_memory()
    print(json.dumps(MEASUREMENTS[args.kind](args)))


def run_child(common, kind, **options):
    command = [sys.executable, __file__, "--child", kind, *common]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="training and sampling batch (default 8)")
    parser.add_argument("--sample-steps", type=int, default=10, help="DDIM steps per sampling run (default 10)")
    parser.add_argument("--child", dest="kind", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="DiT-LLaMA-S/2", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--guidance", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind is not None:
        return child(args)

    common = ["--device", args.device, "--batch-size", str(args.batch_size), "--sample-steps", str(args.sample_steps)]
    rows, values = [], {}
    matmul = {p: run_child(common, "matmul", dtype=d)["gflop_per_s"] for p, d in (("fp32", "float32"),
                                                                                 ("bf16", "bfloat16"))}
    for precision, rate in matmul.items():
        rows.append((f"matmul 2048^2 {precision}", "", f"{rate:.1f} GFLOP/s", "", ""))
    train = {}
    for model in ("DiT-LLaMA-S/2", "DiT-S/2"):
        for precision in ("fp32", "bf16"):
            r = train[model, precision] = run_child(common, "train", model=model, precision=precision)
            fraction = r["gflop_per_s"] / matmul[precision]
            rows.append((f"train {model} {precision}", f"{r['step_s']:.3f} s/step", f"{r['images_per_s']:.2f} img/s",
                         f"{r['gflop_per_s']:.1f} GFLOP/s = {fraction:.2f} x matmul", f"{r['peak_mib']:.0f}"))
    values["train_fp32_fraction"] = train["DiT-LLaMA-S/2", "fp32"]["gflop_per_s"] / matmul["fp32"]
    values["bf16_step_ratio"] = train["DiT-LLaMA-S/2", "bf16"]["step_s"] / train["DiT-LLaMA-S/2", "fp32"]["step_s"]
    values["llama_dit_ratio"] = train["DiT-LLaMA-S/2", "fp32"]["step_s"] / train["DiT-S/2", "fp32"]["step_s"]
    sample = {}
    for guidance, precision in ((0, "fp32"), (1, "fp32"), (1, "bf16")):
        r = sample[guidance, precision] = run_child(common, "sample", guidance=guidance, precision=precision)
        rows.append((f"sample DDIM-{args.sample_steps} {'CFG' if guidance else 'no CFG'} {precision}",
                     f"{r['batch_s']:.2f} s/batch", f"{r['images_per_s']:.2f} img/s", "", f"{r['peak_mib']:.0f}"))
    values["cfg_ratio"] = sample[0, "fp32"]["images_per_s"] / sample[1, "fp32"]["images_per_s"]
    values["bf16_sampling_ratio"] = sample[1, "fp32"]["images_per_s"] / sample[1, "bf16"]["images_per_s"]
    fid = run_child(common, "fid")
    rows.append(("FID Inception features 256px", "", f"{fid['images_per_s']:.2f} img/s", "", f"{fid['peak_mib']:.0f}"))
    memory = run_child(common, "memory")
    values["checkpointing_ratio"] = memory["checkpointing_mib"] / memory["plain_mib"]
    rows.append(("activations XL/2 batch 32", "", "", f"{memory['plain_mib']:.0f} MiB plain, "
                 f"{memory['checkpointing_mib']:.0f} MiB checkpointed", ""))
    cli_help = run_child(common, "help")
    rows.append(("vlgen --help (new process)", f"{cli_help['seconds']:.2f} s", "", "", ""))

    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, latents 4x32x32")
    header = ("measurement", "time", "throughput", "rate", "peak MiB")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print()
    failed = 0
    for description, key, limit, kind in TARGETS:
        ok = values[key] >= limit if kind == "min" else values[key] <= limit
        failed += not ok
        print(f"{'ok  ' if ok else 'MISS'} {description}: {values[key]:.3f} ({'>=' if kind == 'min' else '<='} {limit})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
