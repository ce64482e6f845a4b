"""What the benchmarks share: timing, peak memory, a named model with random weights and its inputs,
the training step they time (vlgen's or the reference loop's), and the sampling benchmarks'
command line."""
import argparse
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from reference_loop import reference_training_step
from vlgen.core.optimizer import create_adamw
from vlgen.diffusion import create_diffusion
from vlgen.models import create_model
from vlgen.training.ema import create_ema, update_ema


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def seconds(fn, device):
    """Wall time of one call of fn, waiting for the device."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_calls(fn, device, repeats, warmup=1):
    """Wall times of `repeats` calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [seconds(fn, device) for _ in range(repeats)]


def peak_memory_mib(device):
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def training_step(model_name, device, precision, batch_size, latent_size=32, loop="vlgen", compiled=False):
    """One full DDPM training step of a named model on random latents: DiT's hybrid loss (MSE + VLB,
    learned sigma) under autocast, backward, AdamW, EMA update. loop: "vlgen" (fused AdamW,
    foreach EMA) or "reference" (the plain loop of reference_loop.py around the same model).
    compiled: the denoiser compiled in place, as `model.compile: true` trains it."""
    torch.manual_seed(0)
    model = create_model(model_name, sample_size=latent_size).to(device).train()
    if compiled:
        model.compile()
    diffusion = create_diffusion()
    x = torch.randn(batch_size, 4, latent_size, latent_size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    autocast = torch.autocast(str(device).split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    if loop == "reference":
        reference_step = reference_training_step(model, diffusion, x, y)

        def step():
            with autocast:
                reference_step()

        return step
    ema = create_ema(model)
    optimizer = create_adamw(model.parameters(), lr=1e-4)

    def step():
        t = diffusion.sample_times(batch_size, device)
        with autocast:
            loss = diffusion.training_losses(model, x, t, y=y)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_ema(ema, model, 0.9999)

    return step


def measure_training(model_name, device, precision, batch_size, steps=8, warmup=2, latent_size=32, loop="vlgen",
                     compiled=False):
    """Median step time, images/s, model FLOP per step (torch's FLOP counter) and FLOP/s, peak memory.
    Compiled: no FLOP count (the compiled graph hides its ops from the counter; the eager row has the
    same FLOP), and compile_s, the warm-up steps' time beyond that of compiled steps: compilation
    (and the recompilations of the first steps)."""
    step = training_step(model_name, device, precision, batch_size, latent_size, loop, compiled)
    result = {"model": model_name}
    if not compiled:
        with FlopCounterMode(display=False) as counter:
            step()
        result["gflop_per_step"] = counter.get_total_flops() / 1e9
    warm = [seconds(step, device) for _ in range(warmup)]
    median = statistics.median([seconds(step, device) for _ in range(steps)])
    result.update(step_s=median, images_per_s=batch_size / median, peak_mib=peak_memory_mib(device))
    if compiled:
        result["compile_s"] = sum(warm) - warmup * median
    else:
        result["gflop_per_s"] = result["gflop_per_step"] / median
    return result


def random_weight_model(name, device):
    """The model with weights drawn at std 0.02: the reference init outputs zeros, which would
    make every sampler's work trivial."""
    torch.manual_seed(0)
    model = create_model(name).to(device).eval()
    for param in model.parameters():
        param.data.normal_(std=0.02)
    return model


def latent_batch(model, batch_size, device):
    """(noise, class labels) for one batch at the model's training resolution."""
    size = model.config.sample_size
    noise = torch.randn(batch_size, model.config.in_channels, size, size, device=device)
    return noise, torch.randint(0, model.config.num_classes, (batch_size,), device=device)


def sampling_arguments(description, *, batch_size, guidance_scale, model=None, repeats=None):
    """Parsed command line of a sampling benchmark: --batch-size, --steps (50), --guidance-scale,
    --device, and --model / --repeats where the benchmark has a default for them."""
    parser = argparse.ArgumentParser(description=description)
    if model is not None:
        parser.add_argument("--model", default=model)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=guidance_scale)
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()
