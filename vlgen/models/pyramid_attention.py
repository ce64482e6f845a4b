"""The two attentions of pyramid VisionLLaMA (Twins-SVT layout, with 2D RoPE on q and k), and the
conditional position encoding (PEG) that Twins can add to them.

- Locally-grouped self-attention (LSA): full attention inside non-overlapping window x window
  groups; the grid is zero-padded at the right and bottom to whole windows (as the reference) and
  RoPE uses each token's position inside its window.
- Global sub-sampled attention (GSA): every token attends to a summary grid, the feature map
  reduced sr x sr by a strided convolution (+ LayerNorm). Queries rotate with their grid
  positions; keys with the reference's summary positions (deit/my_models.py GSAttention): summary
  token i sits at ((i mod W) * sr + b, (i div W) * sr + b), b = 1 - 1/sr, where W is the width
  of the full grid (not of the summary grid). That layout is what the published models were
  trained with, so it is kept. AS2DRoPE scales both by (training grid / current grid).
"""
import torch
from torch import nn
from torch.nn import functional as F

from vlgen.models.attention import Attention, attend
from vlgen.models.rope import apply_rope, rope_2d_angles, rope_angles_at, rope_scales, rope_tables


class LocallyGroupedAttention(Attention):
    """forward(x (N, h*w, D), h, w) -> (N, h*w, D): Attention (qkv, proj) applied window by window."""

    def __init__(self, dim, num_heads, window_size, rope_theta=10000.0):
        super().__init__(dim, num_heads)
        self.window_size = window_size
        self.rope_theta = rope_theta
        self._tables = {}

    def rope(self, device):
        """Window-local positions: the same table for every window, whatever the resolution."""
        key = torch.device(device)
        if key not in self._tables:
            angles = rope_2d_angles(self.head_dim, self.window_size, self.window_size, self.rope_theta)
            self._tables[key] = rope_tables(angles, device)
        return self._tables[key]

    def forward(self, x, grid_h, grid_w):
        n, t, d = x.shape
        ws = self.window_size
        pad_b, pad_r = -grid_h % ws, -grid_w % ws
        x = F.pad(x.view(n, grid_h, grid_w, d), (0, 0, 0, pad_r, 0, pad_b))  # (N, Hp, Wp, D)
        rows, cols = (grid_h + pad_b) // ws, (grid_w + pad_r) // ws
        windows = x.view(n, rows, ws, cols, ws, d).transpose(2, 3).reshape(n * rows * cols, ws * ws, d)
        out = super().forward(windows, self.rope(x.device))  # (N * windows, ws * ws, D)
        out = out.view(n, rows, cols, ws, ws, d).transpose(2, 3).reshape(n, rows * ws, cols * ws, d)
        return out[:, :grid_h, :grid_w].reshape(n, t, d)


class GlobalSubsampledAttention(nn.Module):
    """forward(x (N, h*w, D), h, w) -> (N, h*w, D). base_grid: the stage's token grid at the
    training resolution (for AS2DRoPE)."""

    def __init__(self, dim, num_heads, sr_ratio, base_grid, rope_theta=10000.0, rope_auto_scale=True, norm_eps=1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.base_grid = tuple(base_grid)
        self.rope_theta, self.rope_auto_scale = rope_theta, rope_auto_scale
        self._tables = {}

    def rope(self, grid_h, grid_w, device):
        """(query tables, key tables) for an h x w grid, cached."""
        key = (grid_h, grid_w, torch.device(device))
        if key not in self._tables:
            scale_h, scale_w = rope_scales(self.base_grid, grid_h, grid_w, self.rope_auto_scale)
            queries = rope_2d_angles(self.head_dim, grid_h, grid_w, self.rope_theta, scale_h, scale_w)
            sr = self.sr_ratio
            index = torch.arange((grid_h // sr) * (grid_w // sr), dtype=torch.float64)
            offset = 1.0 - 1.0 / sr
            x = (torch.remainder(index, grid_w) * sr + offset) * scale_w
            y = (torch.div(index, grid_w, rounding_mode="floor") * sr + offset) * scale_h
            keys = rope_angles_at(self.head_dim, x, y, self.rope_theta)
            self._tables[key] = (rope_tables(queries, device), rope_tables(keys, device))
        return self._tables[key]

    def forward(self, x, grid_h, grid_w):
        n, t, d = x.shape
        q_rope, k_rope = self.rope(grid_h, grid_w, x.device)
        q = self.q(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)  # (N, H, T, hd)
        summary = x
        if self.sr_ratio > 1:
            summary = self.sr(x.transpose(1, 2).reshape(n, d, grid_h, grid_w)).flatten(2).transpose(1, 2)  # (N, M, D)
            summary = self.norm(summary)
        k, v = self.kv(summary).view(n, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (N, H, M, hd)
        out = attend(apply_rope(q, *q_rope), apply_rope(k, *k_rope), v)  # (N, H, T, hd)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class PositionEncodingGenerator(nn.Module):
    """Conditional position encoding (Twins' PEG): tokens + depthwise 3x3 convolution of their map."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x, grid_h, grid_w):
        n, t, d = x.shape
        feature_map = x.transpose(1, 2).reshape(n, d, grid_h, grid_w)
        return x + self.proj(feature_map).flatten(2).transpose(1, 2)
