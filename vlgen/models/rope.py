"""2D rotary position embedding (RoPE) for VisionLLaMA attention, with auto-scaling (AS2DRoPE).

Layout (as in VisionLLaMA): the head dimension is split into adjacent pairs (2i, 2i+1). Pair 2j
rotates with the token's x (column) index and pair 2j+1 with its y (row) index, both at frequency
theta ** (-4j / head_dim). Attention logits then depend only on position differences.

AS2DRoPE: a model trained on a (base_h, base_w) token grid that runs on an (h, w) grid scales its
positions by (base_h / h, base_w / w), so positions always span the range seen in training.
"""
import torch
from torch import nn


def rope_angles_at(head_dim, x, y, theta=10000.0):
    """Rotation angle of every (token, rotary pair) for tokens at columns x and rows y (float
    tensors (T,), any real positions): float64 (T, head_dim // 2)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    freqs = theta ** (-torch.arange(0, head_dim, 4, dtype=torch.float64) / head_dim)  # (hd/4,)
    x_angles = x.double()[:, None] * freqs  # (T, hd/4)
    y_angles = y.double()[:, None] * freqs  # (T, hd/4)
    return torch.stack([x_angles, y_angles], dim=-1).reshape(len(x), head_dim // 2)


def rope_2d_angles(head_dim, grid_h, grid_w, theta=10000.0, scale_h=1.0, scale_w=1.0, prefix_tokens=0):
    """rope_angles_at for a token grid in row-major order: (prefix_tokens + grid_h * grid_w,
    head_dim // 2). prefix_tokens (a class token) sit before the grid at the row-major positions
    of flat indices -prefix_tokens ... -1: VisionLLaMA's classifier puts its class token at flat
    index -1, i.e. row -1, column grid_w - 1."""
    index = torch.arange(-prefix_tokens, grid_h * grid_w, dtype=torch.float64)
    y = torch.div(index, grid_w, rounding_mode="floor") * scale_h  # row
    x = torch.remainder(index, grid_w) * scale_w  # column
    return rope_angles_at(head_dim, x, y, theta)


def rope_scales(base_grid, grid_h, grid_w, auto_scale):
    """AS2DRoPE's position scales (h, w): training grid / current grid, or (1, 1) unscaled."""
    if not auto_scale:
        return 1.0, 1.0
    return base_grid[0] / grid_h, base_grid[1] / grid_w


def rope_tables(angles, device):
    """The (cos, signed_sin) tables of apply_rope, float32 (T, head_dim), from angles (T, head_dim // 2)."""
    angles = angles.repeat_interleave(2, dim=-1).to(device=device, dtype=torch.float32)
    sign = torch.tensor([-1.0, 1.0], device=device).repeat(angles.shape[-1] // 2)
    return angles.cos(), angles.sin() * sign


def apply_rope(x, cos, signed_sin):
    """Rotate the pairs (x0, x1) = x[..., 2i:2i+2] of x (..., T, head_dim) by their angles:
    (x0 cos - x1 sin, x1 cos + x0 sin). cos: (T, head_dim), each pair's value twice; signed_sin:
    (T, head_dim), (-sin, +sin) per pair. In float32 like the reference, as one complex product
    (x0 + i x1)(cos + i sin) over a view of x: no copy of x, less than half the time of the same
    rotation in real arithmetic, forward and backward. In a compiled graph, rotate_real instead."""
    if torch.compiler.is_compiling():
        return rotate_real(x, cos, signed_sin)
    rotation = torch.complex(cos[..., 0::2], signed_sin[..., 1::2])
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


def rotate_real(x, cos, signed_sin):
    """apply_rope's rotation in real arithmetic, for compiled graphs: inductor fuses it into one
    kernel, but generates no code for complex operators (it would leave them to eager)."""
    x0, x1 = x.float()[..., 0::2], x.float()[..., 1::2]
    cos, sin = cos[..., 0::2], signed_sin[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2).type_as(x)


class RotaryEmbedding2D(nn.Module):
    """Holds no weights: returns the (cos, signed_sin) tables of apply_rope for a token grid
    (and prefix_tokens before it), cached per grid and device."""

    def __init__(self, head_dim, base_grid, theta=10000.0, auto_scale=True, prefix_tokens=0):
        super().__init__()
        self.head_dim = head_dim
        self.base_grid = tuple(base_grid)
        self.theta = theta
        self.auto_scale = auto_scale
        self.prefix_tokens = prefix_tokens
        self._cache = {}

    def forward(self, grid_h, grid_w, device):
        key = (grid_h, grid_w, torch.device(device))
        if key not in self._cache:
            scale_h, scale_w = rope_scales(self.base_grid, grid_h, grid_w, self.auto_scale)
            angles = rope_2d_angles(self.head_dim, grid_h, grid_w, self.theta, scale_h, scale_w, self.prefix_tokens)
            self._cache[key] = rope_tables(angles, device)
        return self._cache[key]
