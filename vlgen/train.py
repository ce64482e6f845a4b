"""Training entry point: `accelerate launch -m vlgen.train --config configs/X.yaml` (or `vlgen train`).

Adds what the loop leaves to the app layer: the command line and the EMA sample grids.
"""
import argparse
import sys
from pathlib import Path

import torch

from vlgen.diffusion import create_diffusion
from vlgen.training import load_config, train
from vlgen.training.latents import load_vae

GRID_CLASSES = 10  # columns of the sample grid: the first classes of the dataset


def add_arguments(parser):
    parser.add_argument("--config", default=None, help="YAML config (configs/*.yaml); default: the built-in small "
                                                       "run on the shapes dataset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=2e-4 (repeatable)")
    parser.add_argument("--resume", default=None, help="'latest' (newest checkpoint of logging.output_dir, if any) "
                                                       "or a checkpoint directory")


@torch.no_grad()
def sample_images(run, labels, noise, num_steps, guidance_scale, vae=None):
    """Images in [-1, 1] from the run's EMA model for these labels and starting noise."""
    from sampling import classifier_free_guidance, sample_ddpm, sample_ode

    ema, objective = run.ema, run.objective
    denoise = ema
    if guidance_scale != 1.0 and ema.null_class_id is not None:
        denoise = classifier_free_guidance(ema, guidance_scale, ema.null_class_id, ema.config.in_channels)
    if objective.kind == "ddpm":
        cfg = run.config.objective
        diffusion = create_diffusion(str(num_steps), cfg.noise_schedule, cfg.diffusion_steps, cfg.prediction or "eps",
                                     learn_sigma=objective.process.variance == "learned_range")
        x = sample_ddpm(denoise, diffusion, noise, progress=False, y=labels)
    else:
        x = sample_ode(denoise, objective.process, noise, method="heun", num_steps=num_steps, progress=False, y=labels)
    if vae is not None:
        scale, shift = vae["scaling_factor"], vae["shift_factor"]
        x = vae["model"].decode((x / scale + shift).to(vae["model"].dtype)).sample.float()
    return x.clamp(-1, 1)


def grid_sampler():
    """on_sample callback: the main process writes OUTPUT/samples/step-XXXXXXX.png, two rows of
    the first classes, with fixed noise so grids of successive steps compare."""
    from torchvision.utils import save_image

    vae_cache = {}

    def on_sample(run):
        accelerator, info, log = run.accelerator, run.data_info, run.config.logging
        if accelerator.is_main_process:
            device = accelerator.device
            classes = min(GRID_CLASSES, len(info["class_names"]))
            labels = torch.arange(classes, device=device).repeat(2)
            generator = torch.Generator(device=device).manual_seed(run.config.train.seed)
            shape = (len(labels), info["channels"], info["size"], info["size"])
            noise = torch.randn(shape, device=device, generator=generator)
            if "vae" in info and "model" not in vae_cache:
                vae_cache.update(info["vae"], model=load_vae(info["vae"]["vae"], info["vae"]["vae_subfolder"], device))
            images = sample_images(run, labels, noise, log.sample_steps, log.sample_guidance_scale,
                                   vae_cache or None)
            path = Path(log.output_dir) / "samples" / f"step-{run.step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image((images + 1) / 2, path, nrow=classes)
        accelerator.wait_for_everyone()

    return on_sample


def run_training(args):
    config = load_config(args.config, args.overrides)
    return train(config, resume=args.resume, on_sample=grid_sampler())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="vlgen.train", description="Train a VisionLLaMA denoiser.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_training(args)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"vlgen.train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
