"""`vlgen export CKPT --out DIR`: a training checkpoint's EMA model as a pipeline directory
(DiTLLaMAPipeline or SiTLLaMAPipeline, by objective), loaded with `load_pipeline(DIR)` or the
class's `from_pretrained(DIR)`:

    DIR/model_index.json  the pipeline class, its components and id2label
    DIR/transformer/      the EMA denoiser (config.json + safetensors)
    DIR/scheduler/        the sampler settings (the training objective, default sampler)
    DIR/vae/              the AutoencoderKL the latents came from (latent models only)
"""
from pathlib import Path

from pipelines import create_pipeline
from vlgen.models import VisionLLaMADenoiser
from vlgen.core.output_dir import replaced_dir
from vlgen.training.checkpoint import read_checkpoint_config, read_data_info
from vlgen.models.vae import load_vae


def export_checkpoint(checkpoint, out, overwrite=False):
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / "ema").is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no ema/ directory); checkpoints are "
                                f"OUTPUT/checkpoints/step-XXXXXXX")
    with replaced_dir(out, overwrite) as staging:  # built aside, then moved into place
        config, info = read_checkpoint_config(checkpoint), read_data_info(checkpoint)
        model = VisionLLaMADenoiser.from_pretrained(checkpoint / "ema")
        vae = load_vae(info["vae"]["vae"], info["vae"]["vae_subfolder"]) if "vae" in info else None
        create_pipeline(model, config["objective"], info["class_names"], vae).save_pretrained(staging)
    return out
