"""Plain VisionLLaMA: the ViT-layout perception backbone (patch embedding, class token, pre-norm
LayerScale blocks with 2D RoPE attention and SwiGLU, no absolute position embedding).

As VisionLLaMA's classifier: RoPE covers the class token (at flat position -1) and, with
rope_auto_scale (AS2DRoPE), positions are scaled by (training grid / current grid) at other
resolutions. forward returns the normalised class token (the classification feature) and the
normalised patch tokens as a (N, D, h, w) map for dense heads.
"""
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from vlgen.models.attention import Attention
from vlgen.models.layer_scale_block import LayerScaleBlock, check_images, init_linears_and_norms
from vlgen.models.mlp import SwiGLU, swiglu_hidden_size
from vlgen.models.rope import RotaryEmbedding2D
from vlgen.models.sizes import TRANSFORMER_SIZES, sized_config

# Plain VisionLLaMA sizes of the paper: the ViT/DeiT widths S, B and L.
PLAIN_SIZES = {size: TRANSFORMER_SIZES[size] for size in ("S", "B", "L")}


class VisionLLaMA(ModelMixin, ConfigMixin):
    """forward(images (N, C, H, W)) -> (pooled (N, D), feature map (N, D, H/p, W/p)).

    class_token: pool the class token (the paper's classifier) or, without it, the mean token."""

    @register_to_config
    def __init__(self, image_size: int = 224, patch_size: int = 16, in_channels: int = 3, hidden_size: int = 768,
                 depth: int = 12, num_heads: int = 12, layer_scale_init: float = 1e-4, rope_theta: float = 10000.0,
                 rope_auto_scale: bool = True, norm_eps: float = 1e-6, class_token: bool = True):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if class_token else None
        self.rope = RotaryEmbedding2D(hidden_size // num_heads, (grid, grid), rope_theta, rope_auto_scale,
                                      prefix_tokens=int(class_token))
        hidden = swiglu_hidden_size(hidden_size)
        self.blocks = nn.ModuleList(
            LayerScaleBlock(hidden_size, Attention(hidden_size, num_heads), SwiGLU(hidden_size, hidden),
                            layer_scale_init, norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.initialize_weights()

    def initialize_weights(self):
        """DeiT's: truncated normal (std 0.02) Linears with zero bias, unit LayerNorms, class token
        at std 0.02; the patch embedding keeps PyTorch's default."""
        init_linears_and_norms(self)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, images):
        cfg = self.config
        check_images(images, cfg.in_channels, cfg.patch_size, f"the patch size {cfg.patch_size}")
        n, _, height, width = images.shape
        grid_h, grid_w = height // cfg.patch_size, width // cfg.patch_size
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)  # (N, T, D)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1)  # (N, 1 + T, D)
        rope = self.rope(grid_h, grid_w, images.device)
        for block in self.blocks:
            tokens = block(tokens, rope)
        if self.cls_token is None:  # the reference pools first, then normalises
            pooled, patches = self.norm(tokens.mean(dim=1)), self.norm(tokens)
        else:
            tokens = self.norm(tokens)
            pooled, patches = tokens[:, 0], tokens[:, 1:]
        return pooled, patches.transpose(1, 2).reshape(n, -1, grid_h, grid_w)  # (N, D), (N, D, h, w)


def create_vision_llama(size, **overrides):
    """A plain VisionLLaMA of a paper size ("S", "B", "L"), e.g. create_vision_llama("B", image_size=384)."""
    return VisionLLaMA(**sized_config(PLAIN_SIZES, size, "VisionLLaMA", **overrides))
