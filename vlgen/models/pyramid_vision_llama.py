"""Pyramid VisionLLaMA: the Twins-SVT-layout backbone for dense tasks (VisionLLaMA's
PyramidVisionLLaMA, as its segmentation version in mmseg/.../twins_llama.py).

Four stages; stage i embeds its input with a stride-(patch_size if i == 0 else 2) convolution +
LayerNorm, then runs LayerScale blocks (SwiGLU) whose attention alternates locally-grouped (even
blocks) and global sub-sampled (odd blocks), both with 2D RoPE; optionally a PEG after each
stage's first block (Twins' conditional position encoding; the published models have none). Each
stage's output is LayerNormed and returned as a (N, C_i, H / s_i, W / s_i) map, s_i = patch_size
* 2**i: the multi-scale features for segmentation and detection heads.
"""
import math

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from vlgen.models.layer_scale_block import LayerScaleBlock, check_images, init_linears_and_norms
from vlgen.models.mlp import SwiGLU, swiglu_hidden_size
from vlgen.models.pyramid_attention import (GlobalSubsampledAttention, LocallyGroupedAttention,
                                            PositionEncodingGenerator)
from vlgen.models.sizes import sized_config

# The paper's sizes (Twins-SVT-S/B/L widths): stage widths, heads and depths.
PYRAMID_SIZES = {
    "S": dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 2, 10, 4)),
    "B": dict(embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(2, 2, 18, 2)),
    "L": dict(embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(2, 2, 18, 2)),
}


class PatchEmbedding(nn.Module):
    """Strided convolution then LayerNorm: (N, C, H, W) -> tokens (N, H/s * W/s, D)."""

    def __init__(self, in_channels, dim, stride, norm_eps):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PyramidVisionLLaMA(ModelMixin, ConfigMixin):
    """forward(images (N, C, H, W)) -> tuple of 4 maps (N, embed_dims[i], H / s_i, W / s_i);
    H and W must be multiples of `input_multiple` (32 for the paper's settings)."""

    @register_to_config
    def __init__(self, image_size: int = 224, in_channels: int = 3, patch_size: int = 4,
                 embed_dims: tuple = (64, 128, 256, 512), num_heads: tuple = (2, 4, 8, 16),
                 depths: tuple = (2, 2, 10, 4), window_sizes: tuple = (7, 7, 7, 7), sr_ratios: tuple = (8, 4, 2, 1),
                 layer_scale_init: float = 1e-4, rope_theta: float = 10000.0, rope_auto_scale: bool = True,
                 norm_eps: float = 1e-5, position_encoding_generator: bool = False):
        super().__init__()
        lengths = {len(v) for v in (embed_dims, num_heads, depths, window_sizes, sr_ratios)}
        if len(lengths) != 1:
            raise ValueError("embed_dims, num_heads, depths, window_sizes and sr_ratios need one entry per stage")
        self.strides = [patch_size * 2 ** i for i in range(len(depths))]
        self.input_multiple = math.lcm(*(stride * sr for stride, sr in zip(self.strides, sr_ratios)))
        if image_size % self.input_multiple:
            raise ValueError(f"image_size {image_size} is not a multiple of {self.input_multiple} (patch size x 2^stage "
                             "x sub-sampling ratio of every stage)")
        self.patch_embeds = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i, (dim, heads, depth, window, sr) in enumerate(zip(embed_dims, num_heads, depths, window_sizes, sr_ratios)):
            self.patch_embeds.append(PatchEmbedding(in_channels if i == 0 else embed_dims[i - 1], dim,
                                                    patch_size if i == 0 else 2, norm_eps))
            base_grid = (image_size // self.strides[i],) * 2
            attentions = [LocallyGroupedAttention(dim, heads, window, rope_theta) if j % 2 == 0 else
                          GlobalSubsampledAttention(dim, heads, sr, base_grid, rope_theta, rope_auto_scale, norm_eps)
                          for j in range(depth)]
            self.blocks.append(nn.ModuleList(
                LayerScaleBlock(dim, attn, SwiGLU(dim, swiglu_hidden_size(dim)), layer_scale_init, norm_eps)
                for attn in attentions))
        self.pegs = nn.ModuleList(PositionEncodingGenerator(dim) for dim in embed_dims) \
            if position_encoding_generator else None
        self.stage_norms = nn.ModuleList(nn.LayerNorm(dim, eps=norm_eps) for dim in embed_dims)
        self.initialize_weights()

    @property
    def out_channels(self):
        return list(self.config.embed_dims)

    def initialize_weights(self):
        """The reference's: truncated normal (0.02) Linears with zero bias, unit LayerNorms,
        convolutions normal(0, sqrt(2 / fan_out)) with zero bias."""
        init_linears_and_norms(self)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)

    def forward(self, images):
        check_images(images, self.config.in_channels, self.input_multiple, str(self.input_multiple))
        n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        x, features = images, []
        for i, (embed, blocks) in enumerate(zip(self.patch_embeds, self.blocks)):
            grid_h, grid_w = height // self.strides[i], width // self.strides[i]
            x = embed(x)  # (N, h*w, C_i)
            for j, block in enumerate(blocks):
                x = block(x, grid_h, grid_w)
                if j == 0 and self.pegs is not None:
                    x = self.pegs[i](x, grid_h, grid_w)
            x = self.stage_norms[i](x).transpose(1, 2).reshape(n, -1, grid_h, grid_w)  # (N, C_i, h, w)
            features.append(x)
        return tuple(features)


def create_pyramid_vision_llama(size, **overrides):
    """A pyramid VisionLLaMA of a paper size ("S", "B", "L"), e.g. create_pyramid_vision_llama("B", image_size=512)."""
    return PyramidVisionLLaMA(**sized_config(PYRAMID_SIZES, size, "pyramid VisionLLaMA", **overrides))
