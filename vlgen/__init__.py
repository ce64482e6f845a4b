"""vlgen: image generation with VisionLLaMA diffusion transformers."""
from pathlib import Path

__version__ = "0.1.0"

# The repository keeps pipelines/ and sampling/ beside vlgen/; an install maps them to vlgen.pipelines
# and vlgen.sampling. Imported straight from a source checkout (`python -m vlgen` at its root, which
# puts the checkout ahead of the install), this folder has neither: look for them beside it.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "pipelines" / "__init__.py").is_file():
    __path__.append(str(_checkout))
