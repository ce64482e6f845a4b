"""`vlgen train` (several processes: `accelerate launch -m vlgen train --config configs/X.yaml`).

Adds what the loop leaves to the app layer: the command line and the EMA sample grids (drawn
with the run's pipeline, in the run's precision).
"""
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from vlgen.data.latents import META
from vlgen.models.vae import load_vae
from vlgen.pipelines import create_pipeline, labelled_grid
from vlgen.training import load_config, train

GRID_CLASSES, GRID_COLUMNS = 10, 2  # rows: the first classes of the dataset; samples per class
GRID_SAMPLERS = {"ddpm": {"sampler": "ddim"}, "flow": {"sampler": "ode", "method": "heun"}}  # fixed step counts


def grid_vae(config):
    """The VAE that decodes a latent run's grids, loaded by the main process before training starts
    (a VAE that cannot be loaded, on a node without internet, say, fails the run now rather than at
    its first grid); None for pixel data, without grids and on the other processes."""
    if config.data.kind != "latents" or not config.logging.sample_every or int(os.environ.get("RANK", "0")) != 0:
        return None
    meta_file = Path(config.data.path) / META
    if not meta_file.is_file():
        return None  # the run itself names the problem with the data
    meta = json.loads(meta_file.read_text())
    return load_vae(meta["vae"], meta["vae_subfolder"])


def grid_sampler(vae=None):
    """on_sample callback: the main process writes OUTPUT/samples/step-XXXXXXX.png from the EMA
    model, one labelled row per class (the first GRID_CLASSES), with fixed noise so grids of
    successive steps compare, under the run's autocast; the others wait on the CPU side channel."""

    def on_sample(run):
        accelerator, info, log = run.accelerator, run.data_info, run.config.logging
        if accelerator.is_main_process:
            objective = asdict(run.config.objective)
            decoder = None if vae is None else vae.to(accelerator.device)
            pipe = create_pipeline(run.ema, objective, info["class_names"], decoder, latent_norm=info.get("latent_norm"),
                                   num_inference_steps=log.sample_steps, **GRID_SAMPLERS[objective["kind"]])
            pipe.set_progress_bar_config(disable=True)
            classes = list(range(min(GRID_CLASSES, len(info["class_names"]))))
            generator = torch.Generator().manual_seed(run.config.train.seed)
            guidance = log.sample_guidance_scale if run.ema.null_class_id is not None else 1.0  # no null class
            with accelerator.autocast():
                images = pipe(classes * GRID_COLUMNS, guidance_scale=guidance, generator=generator).images
            rows = [(info["class_names"][c], images[c::len(classes)]) for c in classes]
            path = Path(log.output_dir) / "samples" / f"step-{run.step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            labelled_grid(rows).save(path)
        run.channel.wait_for_main()  # its timeout allows for the grid

    return on_sample


def run_training(args):
    config = load_config(args.config, args.overrides)
    return train(config, resume=args.resume, on_sample=grid_sampler(grid_vae(config)))
