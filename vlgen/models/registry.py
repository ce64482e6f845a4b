"""Named model sizes, as DiT, SiT and VisionLLaMA define them.

Names: DiT-{S,B,L,XL}/{2,4,8} (plain DiT blocks), DiT-LLaMA-* (VisionLLaMA blocks), SiT-* and
SiT-LLaMA-* (the same networks as used by SiT: the final layer keeps the learned-sigma width of the
reference, but forward returns only the prediction channels).
"""
import difflib

from vlgen.models.denoiser import VisionLLaMADenoiser
from vlgen.models.sizes import TRANSFORMER_SIZES

SIZES = TRANSFORMER_SIZES
PATCH_SIZES = (2, 4, 8)
FAMILIES = {
    "DiT": dict(block_type="dit", learn_sigma=True, discard_sigma=False),
    "DiT-LLaMA": dict(block_type="llama", learn_sigma=True, discard_sigma=False),
    "SiT": dict(block_type="dit", learn_sigma=True, discard_sigma=True),
    "SiT-LLaMA": dict(block_type="llama", learn_sigma=True, discard_sigma=True),
}

MODEL_CONFIGS = {
    f"{family}-{size}/{patch}": {**family_cfg, **size_cfg, "patch_size": patch}
    for family, family_cfg in FAMILIES.items()
    for size, size_cfg in SIZES.items()
    for patch in PATCH_SIZES
}


def model_config(name, **overrides):
    """The constructor arguments of a named model.

    Args:
        name: a named size, e.g. "SiT-LLaMA-XL/2" (`vlgen models` lists them).
        **overrides: constructor arguments that replace the size's, e.g. sample_size, num_classes.

    Returns:
        dict: keyword arguments of `VisionLLaMADenoiser`.

    Raises:
        ValueError: the name is unknown (the message suggests close ones).
    """
    if name not in MODEL_CONFIGS:
        close = difflib.get_close_matches(name, MODEL_CONFIGS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Known: {', '.join(MODEL_CONFIGS)}")
    return {**MODEL_CONFIGS[name], **overrides}


def model_name(config):
    """The registered name of a denoiser's config (its constructor arguments, or model.config), or
    None when no named size has its widths and block type."""
    keys = ("block_type", "learn_sigma", "discard_sigma", "hidden_size", "depth", "num_heads", "patch_size")
    if config.get("mlp_type") is not None or config.get("norm", "layernorm") != "layernorm" or config.get("qk_norm"):
        return None
    return next((name for name, named in MODEL_CONFIGS.items() if all(config[k] == named[k] for k in keys)), None)


def create_model(name, **overrides):
    """Build a named denoiser, e.g. `create_model("DiT-LLaMA-XL/2", sample_size=32, num_classes=1000)`.

    Args:
        name: a named size (`vlgen models` lists them with their parameter counts).
        **overrides: constructor arguments of `VisionLLaMADenoiser` that replace the size's.

    Returns:
        VisionLLaMADenoiser: freshly initialised (adaLN-Zero: the blocks start as identities).
    """
    return VisionLLaMADenoiser(**model_config(name, **overrides))
