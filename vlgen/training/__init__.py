"""Training: typed configs, datasets (shapes, image folders, VAE latents), EMA, atomic checkpoints
and the accelerate loop."""
from vlgen.training.config import Config, load_config
from vlgen.training.loop import Run, train

__all__ = ["Config", "load_config", "Run", "train"]
