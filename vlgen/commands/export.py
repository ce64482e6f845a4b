"""`vlgen export CKPT --out DIR`: a training checkpoint's EMA model as a pipeline directory
(DiTLLaMAPipeline or SiTLLaMAPipeline, by objective), loaded with `load_pipeline(DIR)`, the
class's `from_pretrained(DIR)`, or diffusers' `DiffusionPipeline.from_pretrained(DIR)` once
`pipelines` is imported:

    DIR/model_index.json  the pipeline class, its components, id2label and the training process
    DIR/transformer/      the EMA denoiser (config.json + safetensors)
    DIR/scheduler/        the default sampler; its config carries the model's betas and prediction
                          type, so `X.from_config(pipe.scheduler.config)` fits any diffusers scheduler
    DIR/vae/              the AutoencoderKL the latents came from (latent models only)
"""
import math
import warnings
from pathlib import Path

from pipelines import create_pipeline
from vlgen.core.output_dir import replaced_dir
from vlgen.models import VisionLLaMADenoiser
from vlgen.models.vae import load_vae
from vlgen.training.checkpoint import checkpoint_step, read_checkpoint_config, read_data_info


def ema_warning(step, decay):
    """Why the EMA weights of a checkpoint at `step` would sample noise, or None: after n updates of
    decay d they still hold d^n of the initial weights (over 1/e below n = 1 / (1 - d))."""
    initial_share = decay**step
    if initial_share <= math.exp(-1):
        return None
    return (f"the EMA weights still hold {initial_share:.0%} of the untrained initial weights after {step} updates "
            f"of decay {decay}, so their samples look like noise; train for at least {math.ceil(3 / (1 - decay))} "
            "steps, or lower train.ema_decay for short runs")


def export_checkpoint(checkpoint, out, overwrite=False):
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / "ema").is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no ema/ directory); checkpoints are "
                                f"OUTPUT/checkpoints/step-XXXXXXX")
    with replaced_dir(out, overwrite, marker="model_index.json") as staging:  # built aside, then moved into place
        config, info = read_checkpoint_config(checkpoint), read_data_info(checkpoint)
        problem = ema_warning(checkpoint_step(checkpoint), config["train"]["ema_decay"])
        if problem is not None:
            warnings.warn(problem, stacklevel=2)
        model = VisionLLaMADenoiser.from_pretrained(checkpoint / "ema")
        vae = load_vae(info["vae"]["vae"], info["vae"]["vae_subfolder"]) if "vae" in info else None
        create_pipeline(model, config["objective"], info["class_names"], vae).save_pretrained(staging)
    return out
