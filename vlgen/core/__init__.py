"""What every layer shares, knowing no model: option checks, atomic writes and output directories,
classifier-free guidance over any denoise(x, t, y), per-sample reductions and the fused AdamW."""
