"""vlgen: image generation with VisionLLaMA diffusion transformers."""
import sys

from vlgen.core.moved import MovedModuleFinder

__version__ = "0.1.0"

if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(MovedModuleFinder())
