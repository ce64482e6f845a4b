"""Denoisers (VisionLLaMA and plain DiT blocks), their layers and the size registry; the plain and
pyramid VisionLLaMA perception backbones live in vision_llama and pyramid_vision_llama."""
from vlgen.models.denoiser import VisionLLaMADenoiser
from vlgen.models.registry import MODEL_CONFIGS, create_model, model_config

__all__ = ["VisionLLaMADenoiser", "MODEL_CONFIGS", "create_model", "model_config"]
