"""The pre-norm transformer block of VisionLLaMA's perception backbones (its LAMABlock):
x + gamma_1 * attn(norm1(x)), then x + gamma_2 * mlp(norm2(x)), with LayerScale vectors gamma."""
import torch
from torch import nn


class LayerScaleBlock(nn.Module):
    """attn(x, *attn_args) and mlp(x) are given; LayerNorms with affine parameters."""

    def __init__(self, dim, attn, mlp, layer_scale_init=1e-4, norm_eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = mlp
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x, *attn_args):
        """x: (N, T, D); attn_args: what the attention needs besides x (RoPE tables, grid size)."""
        x = torch.addcmul(x, self.gamma_1, self.attn(self.norm1(x), *attn_args))
        return torch.addcmul(x, self.gamma_2, self.mlp(self.norm2(x)))
