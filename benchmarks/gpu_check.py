"""The GPU check: one self-checking run of vlgen on a GPU that writes a JSON report, prints each
figure beside its target and exits non-zero when a check fails.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu/h100.json   # one H100: a few minutes
    python benchmarks/gpu_check.py --smoke                                  # the same code, CPU, tiny model

Correctness: the CUDA forward equals the CPU forward (IEEE float32; zero-initialised layers
perturbed so they matter) for DiT-LLaMA-XL/2 and SiT-LLaMA-XL/2; bf16 autocast stays close to
float32; SDPA runs a flash kernel on the model's q/k/v; a training step waits for the GPU nowhere
(torch.cuda.set_sync_debug_mode counts the syncs). Speed (DiT-LLaMA-XL/2, bf16, 256x256 as 32x32
latents' tokens): training images/s eager and compiled (vlgen's training loop, `Run.train_step`)
with MFU from the FLOPs counted in the model's step, peak memory at batch 32 and with gradient
checkpointing at 256, the largest eager batch; float32 steps with TF32 against IEEE; the EMA
update and the optimizer step; classifier-free-guided sampling in model images/s; Inception
feature extraction in images/s; latent extraction with an SD-VAE-shaped encoder, and the latent
loader against the training rate. --smoke runs every check on the CPU with a tiny model, where the
speed targets do not apply (CI runs it).
"""
import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench_data import extraction_rate, loader_rate, synthetic_latents
from vlgen.core.precision import ieee_fp32, set_tf32
from vlgen.evaluation import InceptionFeatures
from vlgen.evaluation.inception import save_random_inception_weights
from vlgen.models import create_model
from vlgen.training import load_config
from vlgen.training.ema import update_ema
from vlgen.training.loop import Run

# Dense bf16 tensor-core peaks (FLOP/s) by device name, for MFU; other devices get no MFU.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
FULL = dict(models=("DiT-LLaMA-XL/2", "SiT-LLaMA-XL/2"), overrides={}, batch=32, checkpointed_batch=256,
            batch_tries=(64, 128, 192, 256), sample_batch=256, inception_batch=250, steps=20, backend="inductor",
            data_workers=6, extraction_images=512, loader_latents=8192)
SMOKE = dict(models=("DiT-LLaMA-S/2", "SiT-LLaMA-S/2"), overrides=dict(hidden_size=64, depth=2, num_heads=2),
             batch=4, checkpointed_batch=8, batch_tries=(8, 16), sample_batch=4, inception_batch=4, steps=2,
             backend="eager", data_workers=0, extraction_images=2, loader_latents=1024)
TARGETS = {"training_eager_images_per_s": 300, "training_compiled_images_per_s": 400,
           "sampling_model_images_per_s": 1000, "inception_images_per_s": 1500}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    """Median seconds of fn over repeats calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def perturbed_model(name, overrides, device, seed=0):
    """The named model with every zero-initialised layer (adaLN, output) drawn small, in eval mode."""
    torch.manual_seed(seed)
    model = create_model(name, sample_size=32, **overrides)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.02)
    return model.to(device).eval()


def model_inputs(model, batch, device, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 32, 32, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator).float()
    if model.config.discard_sigma:  # flow models take times in [0, 1]
        t = t / 1000
    y = torch.randint(0, model.config.num_classes, (batch,), generator=generator)
    return x.to(device), t.to(device), y.to(device)


def relative_error(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def check_forward_equality(settings, device):
    """CUDA against CPU forward in IEEE float32, per model: the largest difference relative to the output's."""
    results = {}
    for name in settings["models"]:
        model = perturbed_model(name, settings["overrides"], "cpu")
        inputs = model_inputs(model, 2, "cpu")
        with torch.no_grad():
            expected = model(*inputs)
            with ieee_fp32():
                got = model.to(device)(*(tensor.to(device) for tensor in inputs)).cpu()
        results[name] = relative_error(got, expected)
    return results


def check_bf16(settings, device):
    """bf16 autocast against float32 on the device: ||a - b|| / ||b|| of the first model's output."""
    model = perturbed_model(settings["models"][0], settings["overrides"], device)
    inputs = model_inputs(model, 4, device)
    with torch.no_grad():
        full = model(*inputs)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = model(*inputs)
    return float((half.float() - full).norm() / full.norm())


def check_flash(settings, device):
    """The attention kernels a bf16 forward of the first model runs (a flash kernel is wanted)."""
    model = perturbed_model(settings["models"][0], settings["overrides"], device)
    inputs = model_inputs(model, 4, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16), profile(activities=activities) as prof:
        model(*inputs)
    names = {event.key for event in prof.key_averages()}
    return sorted(name for name in names if "attention" in name.lower() or "flash" in name.lower() or "fmha" in name)


def training_run(settings, device, batch, precision="bf16", **config):
    """A Run of the first model on the built-in shapes data at 32x32 (the token grid of 256x256 latents)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    overrides = {f"model.{key}": value for key, value in settings["overrides"].items()}
    values = {"model.name": settings["models"][0], "objective.kind": "ddpm", "data.resolution": 32, "data.num_samples": 100_000,
              "data.num_workers": settings["data_workers"], "train.global_batch_size": batch,
              "train.max_steps": 10_000, "logging.tracker": None, "train.mixed_precision": precision,
              **overrides, **config}
    run_config = load_config(overrides=[f"{key}={json.dumps(value)}" for key, value in values.items()])
    torch.manual_seed(0)
    return Run(run_config, Accelerator(mixed_precision=precision, cpu=device.type == "cpu"))


def step_rate(run, steps, device):
    """(seconds per training step, median over steps after two warm-up steps, the batches used)."""
    batches = iter(run.loader())
    for _ in range(2):
        run.train_step(next(batches))
    times = []
    for _ in range(steps):
        batch = next(batches)
        synchronize(device)
        start = time.perf_counter()
        run.train_step(batch)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check_training(settings, device, report):
    """Eager and compiled training rates, MFU, host syncs per step, peak memory."""
    batch, steps = settings["batch"], settings["steps"]
    reset_peak(device)
    run = training_run(settings, device, batch)
    batches = iter(run.loader())
    run.train_step(next(batches))
    with FlopCounterMode(display=False) as counter:
        run.train_step(next(batches))
    flop = counter.get_total_flops()
    syncs = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(3):
                    run.train_step(next(batches))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(warning.message).lower() for warning in caught) / 3
    eager = step_rate(run, steps, device)
    report["training_eager_images_per_s"] = batch / eager
    report["training_gflop_per_step"] = flop / 1e9
    report["host_syncs_per_step"] = syncs
    report["peak_gib_batch"] = peak_gib(device)
    peak = next((value for key, value in PEAK_BF16.items() if key in report["device"]), None)
    report["mfu_eager"] = flop / eager / peak if peak else None
    del run, batches
    reset_peak(device)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    start = time.perf_counter()
    compiled = training_run(settings, device, batch, **{"model.compile": True})
    if settings["backend"] != "inductor":  # the smoke run traces the same graph without generating code
        compiled.model._compiled_call_impl = torch.compile(compiled.model._call_impl, backend=settings["backend"])
    rate = step_rate(compiled, steps, device)
    report["compile_and_warmup_s"] = time.perf_counter() - start - rate * steps
    report["training_compiled_images_per_s"] = batch / rate
    report["mfu_compiled"] = flop / rate / peak if peak else None
    del compiled


def check_memory(settings, device, report):
    """Peak memory with gradient checkpointing at the large batch, and the largest eager batch."""
    reset_peak(device)
    run = training_run(settings, device, settings["checkpointed_batch"], **{"model.gradient_checkpointing": True})
    step_rate(run, 1, device)
    report["peak_gib_checkpointed_batch"] = peak_gib(device)
    del run
    largest = None
    for batch in settings["batch_tries"]:
        reset_peak(device)
        try:
            run = training_run(settings, device, batch)
            step_rate(run, 1, device)
            largest = batch
            del run
        except torch.OutOfMemoryError:
            break
    report["largest_eager_batch"] = largest


def check_tf32(settings, device, report):
    """float32 training steps (no autocast) with TF32 against IEEE float32."""
    rates = {}
    for tf32 in (True, False):
        set_tf32(tf32)
        run = training_run(settings, device, settings["batch"], precision="no")
        rates[tf32] = step_rate(run, max(2, settings["steps"] // 4), device)
        del run
    set_tf32(True)
    report["fp32_step_s_tf32"], report["fp32_step_s_ieee"] = rates[True], rates[False]
    report["tf32_over_ieee"] = rates[True] / rates[False]


def check_update_costs(settings, device, report):
    """Milliseconds of the EMA update and of the optimizer step of the first model."""
    run = training_run(settings, device, settings["batch"])
    run.train_step(next(iter(run.loader())))
    model = run.accelerator.unwrap_model(run.model)
    report["ema_update_ms"] = 1e3 * timed(lambda: update_ema(run.ema, model, 0.9999), device, 5)
    report["optimizer_step_ms"] = 1e3 * timed(run.optimizer.step, device, 5)


def check_sampling(settings, device, report):
    """Classifier-free-guided bf16 forwards of the first model: images through the model per second."""
    model = perturbed_model(settings["models"][0], settings["overrides"], device)
    x, t, y = model_inputs(model, settings["sample_batch"], device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        seconds = timed(lambda: model.forward_with_cfg(x, t, y, guidance_scale=1.5), device, 5)
    report["sampling_model_images_per_s"] = 2 * x.shape[0] / seconds  # both halves of the guided batch


def check_inception(settings, device, report):
    """Inception feature extraction (FID's network, random weights of the same shape) in images/s."""
    with tempfile.TemporaryDirectory() as directory:
        extractor = InceptionFeatures(device, save_random_inception_weights(Path(directory) / "inception.pth"))
    images = torch.randint(0, 256, (settings["inception_batch"], 3, 256, 256), dtype=torch.uint8, device=device)
    report["inception_images_per_s"] = images.shape[0] / timed(lambda: extractor(images), device, 3)


def check_data(settings, device, report):
    """Latent extraction (SD-VAE-shaped encoder) and the latent loader with 2 workers, in images/s."""
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        report["extraction_images_per_s"] = extraction_rate(directory / "extraction", settings["extraction_images"])[0]
        synthetic_latents(directory / "latents", settings["loader_latents"])
        report["loader_images_per_s"] = loader_rate(directory / "latents", 2, batches=4)


def verdicts(report, smoke):
    """(name, value, target, passed) rows: correctness always, speed targets on a GPU run only."""
    rows = [(f"forward CUDA vs CPU, {name}", error, "<= 1e-4", error <= 1e-4)
            for name, error in report["forward_relative_error"].items()]
    rows.append(("bf16 vs float32 (relative norm)", report["bf16_relative_error"], "<= 2e-2",
                 report["bf16_relative_error"] <= 2e-2))
    flash = any("flash" in name.lower() for name in report["attention_kernels"])
    rows.append(("flash SDPA kernel", ", ".join(report["attention_kernels"]) or "none", "a flash kernel", flash))
    syncs = report.get("host_syncs_per_step")
    rows.append(("host syncs per training step", syncs, "0", None if syncs is None else syncs == 0))
    for key, target in TARGETS.items():
        value = report.get(key)
        rows.append((key, value, f">= {target}", None if smoke or value is None else value >= target))
    loader = report.get("loader_images_per_s")
    training = report.get("training_compiled_images_per_s") or report.get("training_eager_images_per_s")
    rows.append(("loader_images_per_s", loader, "> training images/s",
                 None if smoke or None in (loader, training) else loader > training))
    for key in ("extraction_images_per_s", "mfu_eager", "mfu_compiled", "peak_gib_batch", "peak_gib_checkpointed_batch", "largest_eager_batch",
                "tf32_over_ieee", "ema_update_ms", "optimizer_step_ms", "compile_and_warmup_s"):
        rows.append((key, report.get(key), "", None))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: every check runs, targets off")
    parser.add_argument("--out", default=None, help="JSON report (default: benchmarks/results/gpu/check-DATE.json)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run with --smoke for the CPU version")
    settings = SMOKE if args.smoke else FULL
    set_tf32(True)
    report = {"device": "cpu" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "smoke": args.smoke, "settings": {k: v for k, v in settings.items() if k != "overrides"}, "errors": {}}
    started = time.perf_counter()
    steps = {"forward_relative_error": check_forward_equality, "bf16_relative_error": check_bf16,
             "attention_kernels": check_flash}
    for key, check in steps.items():
        report[key] = check(settings, device)
    for check in (check_training, check_memory, check_tf32, check_update_costs, check_sampling, check_inception,
                  check_data):
        try:
            check(settings, device, report)
        except Exception as error:  # a failed measurement is reported and fails the check, the others still run
            report["errors"][check.__name__] = f"{type(error).__name__}: {error}"
    report["seconds"] = time.perf_counter() - started
    rows = verdicts(report, args.smoke)
    report["checks"] = [dict(zip(("name", "value", "target", "passed"), row)) for row in rows]
    out = Path(args.out or f"benchmarks/results/gpu/check-{report['date'][:10]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"{report['device']}, torch {report['torch']}, {report['seconds']:.0f} s -> {out}")
    for name, value, target, passed in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        mark = {True: "ok", False: "FAILED", None: ""}[passed]
        print(f"  {name:<40} {shown:>28}  {target:<16} {mark}")
    for name, error in report["errors"].items():
        print(f"  error in {name}: {error}")
    failed = [row for row in rows if row[3] is False] or report["errors"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
