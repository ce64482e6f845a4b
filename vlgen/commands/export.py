"""`vlgen export CKPT --out DIR`: a training checkpoint's EMA model as a pipeline directory
(DiTLLaMAPipeline or SiTLLaMAPipeline, by objective), loaded with `load_pipeline(DIR)`, the
class's `from_pretrained(DIR)`, or diffusers' `DiffusionPipeline.from_pretrained(DIR,
trust_remote_code=True)` wherever vlgen is installed:

    DIR/model_index.json  the pipeline class, its components, id2label, the training process and
                          the model card's information
    DIR/transformer/      the EMA denoiser (config.json + safetensors)
    DIR/scheduler/        the default sampler; its config carries the model's betas and prediction
                          type, so `X.from_config(pipe.scheduler.config)` fits any diffusers scheduler
    DIR/vae/              the AutoencoderKL the latents came from (latent models only)
    DIR/README.md         the model card: metadata, use, model, training, scores, training config
    DIR/vlgen_pipeline.py the file through which diffusers' generic loader imports vlgen's class
"""
import json
import math
import numbers
import warnings
from pathlib import Path

from vlgen.core.output_dir import replaced_dir
from vlgen.models import VisionLLaMADenoiser
from vlgen.models.vae import load_vae
from vlgen.pipelines import create_pipeline
from vlgen.training.checkpoint import checkpoint_training, read_data_info


def ema_warning(step, decay):
    """Why the EMA weights of a checkpoint at `step` would sample noise, or None: after n updates of
    decay d they still hold d^n of the initial weights (over 1/e below n = 1 / (1 - d))."""
    initial_share = decay**step
    if initial_share <= math.exp(-1):
        return None
    return (f"the EMA weights still hold {initial_share:.0%} of the untrained initial weights after {step} updates "
            f"of decay {decay}, so their samples look like noise; train for at least {math.ceil(3 / (1 - decay))} "
            "steps, or lower train.ema_decay for short runs")


def read_scores(path):
    """The numbers of a JSON object file (e.g. what `vlgen fid` prints) as metric -> value, for the model card."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--scores {path}: not a readable JSON file ({error}); pass a JSON object of metric -> "
                         'number, e.g. {"fid": 2.27}') from None
    scores = {key: value for key, value in values.items() if isinstance(value, numbers.Real)
              and not isinstance(value, bool)} if isinstance(values, dict) else {}
    if not scores:
        raise ValueError(f"--scores {path} holds no metric -> number entries; pass a JSON object such as "
                         '{"fid": 2.27, "inception_score": 278.2}')
    return scores


def export_checkpoint(checkpoint, out, overwrite=False, card=None):
    """The checkpoint's EMA pipeline written to out; card: what the model card adds (name, scores,
    license, datasets, base_model; the training record comes from the checkpoint)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / "ema").is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no ema/ directory); checkpoints are "
                                f"OUTPUT/checkpoints/step-XXXXXXX")
    with replaced_dir(out, overwrite, marker="model_index.json") as staging:  # built aside, then moved into place
        training, info = checkpoint_training(checkpoint), read_data_info(checkpoint)
        config = training["config"]
        problem = ema_warning(training["steps"], config["train"]["ema_decay"])
        if problem is not None:
            warnings.warn(problem, stacklevel=2)
        model = VisionLLaMADenoiser.from_pretrained(checkpoint / "ema")
        vae = load_vae(info["vae"]["vae"], info["vae"]["vae_subfolder"]) if "vae" in info else None
        card = {**(card or {}), "training": training}
        create_pipeline(model, config["objective"], info["class_names"], vae, card=card,
                        latent_norm=info.get("latent_norm")).save_pretrained(staging)
    return out
