"""Multi-scale features for dense heads, from either VisionLLaMA backbone.

Both kinds expose the same interface: forward(images) -> tuple of 4 maps (N, C_i, H / s_i, W / s_i),
`out_channels` [C_i] and `strides` [s_i]. The pyramid backbone has them natively; the plain one
gets ViTDet's simple feature pyramid on its single stride-p map: two stride-2 transposed
convolutions (stride p/4), one (p/2), the map itself (p) and a 2x2 max-pool (2p).
"""
from torch import nn
from torch.nn import functional as F

from vlgen.models.pyramid_vision_llama import PyramidVisionLLaMA
from vlgen.models.vision_llama import VisionLLaMA

BACKBONES = ("pyramid", "plain")


class SimpleFeaturePyramid(nn.Module):
    """A plain VisionLLaMA plus ViTDet's simple feature pyramid (channels D/4, D/2, D, D)."""

    def __init__(self, backbone_config):
        super().__init__()
        self.backbone = VisionLLaMA(**backbone_config)
        dim, patch = self.backbone.config.hidden_size, self.backbone.config.patch_size
        if patch % 4:
            raise ValueError(f"the simple feature pyramid needs a patch size divisible by 4 (its finest level is "
                             f"stride patch/4), got {patch}")
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.out_channels = [dim // 4, dim // 2, dim, dim]
        self.strides = [patch // 4, patch // 2, patch, 2 * patch]

    def forward(self, images):
        feature_map = self.backbone(images)[1]  # (N, D, H/p, W/p)
        return self.up4(feature_map), self.up2(feature_map), feature_map, F.max_pool2d(feature_map, 2)


def create_multiscale_backbone(kind, backbone_config):
    """kind "pyramid": PyramidVisionLLaMA(**backbone_config); "plain": SimpleFeaturePyramid over
    VisionLLaMA(**backbone_config)."""
    if kind == "pyramid":
        return PyramidVisionLLaMA(**backbone_config)
    if kind == "plain":
        return SimpleFeaturePyramid(backbone_config)
    raise ValueError(f"unknown backbone {kind!r}; choose one of {BACKBONES}")
