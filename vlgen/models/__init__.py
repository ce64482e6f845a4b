"""Denoisers (VisionLLaMA and plain DiT blocks), their layers and the size registry."""
from vlgen.models.denoiser import VisionLLaMADenoiser
from vlgen.models.registry import MODEL_CONFIGS, create_model, model_config

__all__ = ["VisionLLaMADenoiser", "MODEL_CONFIGS", "create_model", "model_config"]
