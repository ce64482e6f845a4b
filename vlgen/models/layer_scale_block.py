"""What VisionLLaMA's perception backbones share: the pre-norm transformer block (its LAMABlock),
x + gamma_1 * attn(norm1(x)), then x + gamma_2 * mlp(norm2(x)) with LayerScale vectors gamma,
DeiT's initialisation of the Linears and LayerNorms, and the check of their input images."""
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


def init_linears_and_norms(root):
    """DeiT's initialisation of every Linear under root (truncated normal, std 0.02, zero bias) and
    every LayerNorm (unit weight, zero bias)."""
    for module in root.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def check_images(images, channels, multiple, unit):
    """images must be (N, channels, H, W) with H and W multiples of `multiple` (named by `unit`,
    e.g. "the patch size 16")."""
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"expected images of shape (N, {channels}, H, W), got {tuple(images.shape)}")
    if images.shape[-2] % multiple or images.shape[-1] % multiple:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {unit}; resize or pad to a "
                         "multiple of it")
