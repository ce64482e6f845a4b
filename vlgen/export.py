"""`vlgen export CKPT --out DIR`: a training checkpoint's EMA model as a pipeline directory.

    DIR/transformer/     the EMA denoiser (config.json + safetensors)
    DIR/vae/             the AutoencoderKL the latents came from (latent models only)
    DIR/generation.json  objective settings, latent scaling and id2label, for sampling
"""
import json
import shutil
from pathlib import Path

from vlgen.models import VisionLLaMADenoiser
from vlgen.training.checkpoint import read_checkpoint_config, read_data_info
from vlgen.training.latents import load_vae

GENERATION_FILE = "generation.json"


def export_checkpoint(checkpoint, out, overwrite=False):
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / "ema").is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no ema/ directory); checkpoints are "
                                f"OUTPUT/checkpoints/step-XXXXXXX")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    config, info = read_checkpoint_config(checkpoint), read_data_info(checkpoint)
    model = VisionLLaMADenoiser.from_pretrained(checkpoint / "ema")
    staging = out.parent / f".{out.name}.tmp"  # built aside, then moved into place
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging / "transformer")
    generation = {"objective": config["objective"], "id2label": dict(enumerate(info["class_names"])),
                  "sample_size": info["size"], "latent_scaling": None}
    if "vae" in info:
        vae = info["vae"]
        load_vae(vae["vae"], vae["vae_subfolder"]).save_pretrained(staging / "vae")
        generation["latent_scaling"] = {"scaling_factor": vae["scaling_factor"], "shift_factor": vae["shift_factor"]}
    (staging / GENERATION_FILE).write_text(json.dumps(generation, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
