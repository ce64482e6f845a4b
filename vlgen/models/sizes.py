"""Named model sizes and their lookup.

The transformer widths of the papers: DiT, SiT and the plain VisionLLaMA use the ViT sizes S, B
and L (hidden size, depth, heads), and DiT adds XL. The pyramid VisionLLaMA has its own table
(Twins-SVT widths, in pyramid_vision_llama).
"""
TRANSFORMER_SIZES = {
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
    "L": dict(hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16),
}


def sized_config(sizes, size, model, **overrides):
    """The constructor arguments of `size` in a size table, with overrides; an unknown size is an
    error naming the model and the known sizes."""
    if size not in sizes:
        raise ValueError(f"unknown {model} size {size!r}; choose one of {tuple(sizes)}")
    return {**sizes[size], **overrides}
