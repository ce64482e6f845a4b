"""All speed and memory measurements in one table, checked against the performance targets.

    python benchmarks/run_all.py [--device cpu|cuda] [--batch-size 8] [--sample-steps 10]

It first prints the machine (CPU model and the ISA flags that decide bf16 speed, usable cores,
torch threads, the load average at start, the precision `mixed_precision: auto` picks here), then
the rows (each timed configuration runs in its own subprocess, so its peak memory is its own):
- matmul: the machine's measured dense matmul FLOP/s in fp32 and bf16, the physical limit that
  the training rows are compared with. The bf16 rows (matmul, training, sampling) run only where
  `mixed_precision: auto` picks bf16 (on a CPU with emulated bf16 they would take hours).
- train: one full training step of DiT-LLaMA-S/2 and DiT-S/2 on 4x32x32 latents (DDPM hybrid
  loss with learned sigma, backward, AdamW, EMA update), fp32 and bf16 autocast; median step time,
  images/s, model FLOP/s (torch's FLOP counter over the step) and that rate as a fraction of the
  matmul rate of the same precision.
- train, reference loop: the same DiT-LLaMA-S/2 step as DiT's official training script runs it
  (reference_loop.py: numpy schedule tables, unfused foreach AdamW, Python EMA loop); vlgen's time
  as a multiple of it. The losses of the two loops are checked to agree first.
- compiled: the DiT-LLaMA-S/2 training step and DDIM sampling with guidance with the denoiser
  compiled in place (`torch.compile`, inductor), in each precision used: step time as a multiple
  of the eager one, the compile time (the first calls' time beyond compiled calls), and after how
  many steps the compilation has paid for itself.
- sample: DDIM of DiT-LLaMA-S/2 without and with classifier-free guidance (fp32), and with
  guidance in bf16 weights (as a pipeline with torch_dtype=torch.bfloat16 runs it); DDPM with
  guidance, vlgen's sampler and the reference p_sample_loop with DiT's forward_with_cfg.
- fid: Inception feature extraction (pool, logits and sFID features) of in-memory 256x256 images.
- contention: the demo's training step and a DiT-LLaMA-S/2 step with one busy process per usable
  core, as a multiple of the quiet step (bench_contention.py, with vlgen's thread policy).
- help: `vlgen --help` in a new process (it imports no torch).
- memory: activation memory saved for backward by DiT-LLaMA-XL/2 at batch 32 (256 px, 32x32
  latents) with and without gradient checkpointing, counted exactly on the meta device (shapes
  only; no compute, any machine).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from measure import measure_training, peak_memory_mib, random_weight_model, seconds, time_calls
from vlgen.commands.allocator import keep_freed_memory

TARGETS = (  # (description, value key, limit, "min" or "max")
    ("fp32 training FLOP/s / fp32 matmul FLOP/s", "train_fp32_fraction", 0.70, "min"),
    ("vlgen fp32 training step / reference loop's step", "reference_train_ratio", 0.9, "max"),
    ("vlgen DDPM CFG sampling / reference p_sample_loop", "reference_sample_ratio", 0.9, "max"),
    ("bf16 training FLOP/s / bf16 matmul FLOP/s", "train_bf16_fraction", 0.5, "min"),
    ("bf16 step / fp32 step", "bf16_step_ratio", 0.5, "max"),
    ("compiled bf16 CFG sampling / eager bf16", "compile_sampling_ratio_bf16", 0.7, "max"),
    ("DiT-LLaMA step / DiT step (fp32)", "llama_dit_ratio", 1.10, "max"),
    ("sampling with CFG / without", "cfg_ratio", 2.1, "max"),
    ("bf16 CFG sampling / fp32 CFG sampling", "bf16_sampling_ratio", 0.5, "max"),
    ("activation memory with / without checkpointing (XL/2, batch 32)", "checkpointing_ratio", 0.5, "max"),
    ("demo step with one busy process per core / quiet", "contention_demo", 3.0, "max"),
    ("DiT-LLaMA-S/2 step with one busy process per core / quiet", "contention_DiT-LLaMA-S/2", 3.0, "max"),
)


def measure_matmul(device, dtype_name, size=2048, repeats=10):
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = time_calls(lambda: a @ b, device, repeats, warmup=2)
    return {"gflop_per_s": 2 * size**3 / min(times) / 1e9}


def sampling_run(device, guidance, precision, batch_size, num_steps, sampler="ddim", loop="vlgen", compiled=False):
    """A call that samples one batch with DiT-LLaMA-S/2 of random weights: vlgen's DDIM or DDPM
    sampler, or (loop "reference", DDPM only) the reference p_sample_loop with DiT's
    forward_with_cfg. compiled: the denoiser compiled in place first."""
    from reference_loop import forward_with_cfg, reference_diffusion
    from vlgen.sampling import classifier_free_guidance, sample_ddim, sample_ddpm
    from vlgen.diffusion import create_diffusion

    model = random_weight_model("DiT-LLaMA-S/2", device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model.to(dtype)
    if compiled:
        model.compile()

    def denoise(x, t, y):  # as the pipelines run a torch_dtype model: sampler arithmetic in fp32
        return model(x.to(dtype), t, y).float()

    diffusion = create_diffusion(f"{'ddim' if sampler == 'ddim' else ''}{num_steps}")
    noise = torch.randn(batch_size, 4, 32, 32, device=device)
    labels = torch.randint(0, 1000, (batch_size,), device=device)
    if loop == "reference":
        reference = reference_diffusion(diffusion)
        null = torch.full_like(labels, model.null_class_id)
        guided = forward_with_cfg(denoise, 4.0, channels=4) if guidance else denoise

        def run():
            with torch.no_grad():  # DiT's sample.py: the batch doubled outside the model
                if guidance:
                    reference.p_sample_loop(guided, torch.cat([noise, noise]), y=torch.cat([labels, null]))
                else:
                    reference.p_sample_loop(guided, noise, y=labels)
    else:
        if guidance:
            denoise = classifier_free_guidance(denoise, 4.0, model.null_class_id, guided_channels=4)
        sample = sample_ddim if sampler == "ddim" else sample_ddpm

        def run():
            with torch.inference_mode():
                sample(denoise, diffusion, noise, progress=False, y=labels)
    return run


def measure_sampling(device, guidance, precision, batch_size, num_steps, sampler="ddim", loop="vlgen", compiled=False,
                     repeats=2):
    """sampling_run timed: best of `repeats` batches; first_s is the first batch, with the
    compilation of a compiled denoiser."""
    run = sampling_run(device, guidance, precision, batch_size, num_steps, sampler, loop, compiled)
    first = seconds(run, device)
    times = time_calls(run, device, repeats, warmup=0)
    return {"batch_s": min(times), "images_per_s": batch_size / min(times), "first_s": first,
            "peak_mib": peak_memory_mib(device)}


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


def same_loss(device, batch_size):
    """The largest relative difference of vlgen's and the reference loop's losses (same model, noise
    and timesteps): the two loops time the same computation only if it is ~0."""
    from reference_loop import check_same_loss
    from vlgen.diffusion import create_diffusion

    model = random_weight_model("DiT-LLaMA-S/2", device)
    x = torch.randn(batch_size, 4, 32, 32, device=device)
    return check_same_loss(model, create_diffusion(), x, torch.randint(0, 1000, (batch_size,), device=device))


def machine_lines(device):
    """(lines, whether mixed_precision auto picks bf16): what the figures depend on, the CPU (model,
    the ISA flags that decide bf16 speed), threads, torch, the load when the run started, the
    precision that auto picks here, and the GPU when there is one."""
    import os
    import platform

    from vlgen.core.precision import cpu_flags, cpu_model, cpu_precision_probe, resolve_mixed_precision

    flags = cpu_flags()
    isa = " ".join(flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in flags)
    lines = [f"CPU {cpu_model() or platform.processor() or platform.machine()} ({isa or 'no AVX2'}), "
             f"{len(os.sched_getaffinity(0))} usable cores, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at start"]
    if device.startswith("cuda"):
        lines.append(f"GPU {torch.cuda.get_device_name(device)}")
        choice, why = resolve_mixed_precision("auto", "cuda")
        lines.append(why)
    else:
        probe = cpu_precision_probe(use_cache=False)
        choice = probe["choice"]
        lines.append(f"precision probe: {probe['fp32_gflops']:g} GFLOP/s fp32, {probe['bf16_gflops']:g} bf16 -> "
                     f"mixed_precision auto picks {'bf16' if choice == 'bf16' else 'fp32'}")
    return lines, choice == "bf16"


def pays_after(compile_s, compiled_s, eager_s, per=1, unit="steps"):
    """When compiling has paid for itself: its cost over the time each call saves, in `unit` (`per`
    of them to a call)."""
    saved = eager_s - compiled_s
    if saved <= 0:
        return "never pays for itself (no faster)"
    return f"pays for itself after {compile_s / saved * per:,.0f} {unit}"


MEASUREMENTS = {
    "matmul": lambda a: measure_matmul(a.device, a.dtype),
    "train": lambda a: measure_training(a.model, a.device, a.precision, a.batch_size, loop=a.loop,
                                        compiled=bool(a.compiled)),
    "sample": lambda a: measure_sampling(a.device, a.guidance, a.precision, a.batch_size, a.sample_steps, a.sampler,
                                         a.loop, bool(a.compiled)),
    "same_loss": lambda a: {"largest": same_loss(a.device, a.batch_size)},
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
    parser.add_argument("--sampler", default="ddim", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="vlgen", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind is not None:
        return child(args)

    common = ["--device", args.device, "--batch-size", str(args.batch_size), "--sample-steps", str(args.sample_steps)]
    machine, bf16_used = machine_lines(args.device)  # before the children start: the load is the machine's own
    # bf16 rows only where mixed_precision auto would use bf16: elsewhere nobody runs it, and where
    # it is emulated (hundreds of times slower) they would take hours.
    precisions = ("fp32", "bf16") if bf16_used else ("fp32",)
    difference = run_child(common, "same_loss")["largest"]
    rows, values = [], {}
    dtypes = {"fp32": "float32", "bf16": "bfloat16"}
    matmul = {p: run_child(common, "matmul", dtype=dtypes[p])["gflop_per_s"] for p in precisions}
    train = {(model, precision): run_child(common, "train", model=model, precision=precision)
             for model in ("DiT-LLaMA-S/2", "DiT-S/2") for precision in precisions}
    # The limit is the best rate the machine showed, measured before and after the training rows:
    # a neighbour's load during one measurement does not inflate the fractions.
    matmul = {p: max(rate, run_child(common, "matmul", dtype=dtypes[p])["gflop_per_s"]) for p, rate in matmul.items()}
    for precision, rate in matmul.items():
        rows.append((f"matmul 2048^2 {precision} (best of 2)", "", f"{rate:.1f} GFLOP/s", "", ""))
    for (model, precision), r in train.items():
        fraction = r["gflop_per_s"] / matmul[precision]
        rows.append((f"train {model} {precision}", f"{r['step_s']:.3f} s/step", f"{r['images_per_s']:.2f} img/s",
                     f"{r['gflop_per_s']:.1f} GFLOP/s = {fraction:.2f} x matmul", f"{r['peak_mib']:.0f}"))
    values["train_fp32_fraction"] = train["DiT-LLaMA-S/2", "fp32"]["gflop_per_s"] / matmul["fp32"]
    if bf16_used:
        values["train_bf16_fraction"] = train["DiT-LLaMA-S/2", "bf16"]["gflop_per_s"] / matmul["bf16"]
        values["bf16_step_ratio"] = train["DiT-LLaMA-S/2", "bf16"]["step_s"] / train["DiT-LLaMA-S/2", "fp32"]["step_s"]
    values["llama_dit_ratio"] = train["DiT-LLaMA-S/2", "fp32"]["step_s"] / train["DiT-S/2", "fp32"]["step_s"]
    reference = run_child(common, "train", model="DiT-LLaMA-S/2", precision="fp32", loop="reference")
    values["reference_train_ratio"] = train["DiT-LLaMA-S/2", "fp32"]["step_s"] / reference["step_s"]
    rows.append(("train DiT-LLaMA-S/2 fp32, reference loop", f"{reference['step_s']:.3f} s/step",
                 f"{reference['images_per_s']:.2f} img/s",
                 f"vlgen = {values['reference_train_ratio']:.2f} x its time", f"{reference['peak_mib']:.0f}"))
    for precision in precisions:  # the denoiser compiled in place, as model.compile: true trains it
        r = run_child(common, "train", model="DiT-LLaMA-S/2", precision=precision, compiled=1)
        eager = train["DiT-LLaMA-S/2", precision]
        values[f"compile_train_ratio_{precision}"] = r["step_s"] / eager["step_s"]
        rate = eager["gflop_per_step"] / r["step_s"]
        rows.append((f"train DiT-LLaMA-S/2 {precision}, compiled", f"{r['step_s']:.3f} s/step",
                     f"{r['images_per_s']:.2f} img/s",
                     f"{rate:.1f} GFLOP/s = {rate / matmul[precision]:.2f} x matmul; "
                     f"{values[f'compile_train_ratio_{precision}']:.2f} x eager; compiling {r['compile_s']:.0f} s, "
                     f"{pays_after(r['compile_s'], r['step_s'], eager['step_s'])}", f"{r['peak_mib']:.0f}"))
    sample = {}
    for guidance, precision in [(0, "fp32"), (1, "fp32")] + ([(1, "bf16")] if bf16_used else []):
        r = sample[guidance, precision] = run_child(common, "sample", guidance=guidance, precision=precision)
        rows.append((f"sample DDIM-{args.sample_steps} {'CFG' if guidance else 'no CFG'} {precision}",
                     f"{r['batch_s']:.2f} s/batch", f"{r['images_per_s']:.2f} img/s", "", f"{r['peak_mib']:.0f}"))
    values["cfg_ratio"] = sample[0, "fp32"]["images_per_s"] / sample[1, "fp32"]["images_per_s"]
    if bf16_used:
        values["bf16_sampling_ratio"] = sample[1, "fp32"]["images_per_s"] / sample[1, "bf16"]["images_per_s"]
    for precision in precisions:
        r = run_child(common, "sample", guidance=1, precision=precision, compiled=1)
        eager = sample[1, precision]
        values[f"compile_sampling_ratio_{precision}"] = r["batch_s"] / eager["batch_s"]
        compile_s = r["first_s"] - r["batch_s"]
        pays = pays_after(compile_s, r["batch_s"], eager["batch_s"], per=args.sample_steps, unit="sampling steps")
        rows.append((f"sample DDIM-{args.sample_steps} CFG {precision}, compiled", f"{r['batch_s']:.2f} s/batch",
                     f"{r['images_per_s']:.2f} img/s",
                     f"{values[f'compile_sampling_ratio_{precision}']:.2f} x eager; compiling {compile_s:.0f} s, "
                     f"{pays}", f"{r['peak_mib']:.0f}"))
    ddpm = {loop: run_child(common, "sample", guidance=1, precision="fp32", sampler="ddpm", loop=loop)
            for loop in ("vlgen", "reference")}
    values["reference_sample_ratio"] = ddpm["vlgen"]["batch_s"] / ddpm["reference"]["batch_s"]
    for loop, r in ddpm.items():
        rows.append((f"sample DDPM-{args.sample_steps} CFG fp32, {loop} loop", f"{r['batch_s']:.2f} s/batch",
                     f"{r['images_per_s']:.2f} img/s",
                     f"vlgen = {values['reference_sample_ratio']:.2f} x its time" if loop == "reference" else "",
                     f"{r['peak_mib']:.0f}"))
    fid = run_child(common, "fid")
    rows.append(("FID Inception features 256px", "", f"{fid['images_per_s']:.2f} img/s", "", f"{fid['peak_mib']:.0f}"))
    memory = run_child(common, "memory")
    values["checkpointing_ratio"] = memory["checkpointing_mib"] / memory["plain_mib"]
    rows.append(("activations XL/2 batch 32", "", "", f"{memory['plain_mib']:.0f} MiB plain, "
                 f"{memory['checkpointing_mib']:.0f} MiB checkpointed", ""))
    contention = json.loads(subprocess.run([sys.executable, str(Path(__file__).with_name("bench_contention.py"))],
                                           check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    for kind, ratio in contention.items():
        values[f"contention_{kind}"] = ratio
        rows.append((f"train {kind}, one busy process per core / quiet", "", "", f"{ratio:.2f} x the quiet step", ""))
    cli_help = run_child(common, "help")
    rows.append(("vlgen --help (new process)", f"{cli_help['seconds']:.2f} s", "", "", ""))

    print("\n".join(machine))
    print(f"device {args.device}, batch {args.batch_size}, latents 4x32x32; vlgen's and the reference loop's losses "
          f"differ by at most {difference:.1e} (relative)")
    header = ("measurement", "time", "throughput", "rate", "peak MiB")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print()
    failed = 0
    for description, key, limit, kind in TARGETS:
        if key not in values:
            print(f"n/a  {description}: bf16 is not used on this machine")
            continue
        ok = values[key] >= limit if kind == "min" else values[key] <= limit
        failed += not ok
        print(f"{'ok  ' if ok else 'MISS'} {description}: {values[key]:.3f} ({'>=' if kind == 'min' else '<='} {limit})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
