"""vlgen: image generation with VisionLLaMA diffusion transformers."""
__version__ = "0.1.0"
