"""Frozen image encoders whose patch features representation alignment (REPA) aligns a denoiser's
tokens with: a vlgen VisionLLaMA classifier (a `vlgen train-classifier` directory: works offline and
on any data a classifier was trained on) or DINOv2 through torch.hub (REPA's encoder; from the hub
cache offline, or from a local copy of its repository).

An encoder maps images in [-1, 1] (N, 3, H, W) to a patch feature map (N, D, h, w), under no_grad.
"""
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from vlgen.tasks.classification import VisionLLaMAClassifier

DINOV2_MODELS = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
DINOV2_INPUT = 224  # REPA resizes 256 px images to 224 for DINOv2 (16 x 16 patches of 14 px), 512 px to 448
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ClassifierEncoder(nn.Module):
    """The backbone of a vlgen classifier directory: its normalised patch tokens. The images are
    resized (bilinear) to the size the classifier was trained at."""

    def __init__(self, directory):
        super().__init__()
        self.backbone = VisionLLaMAClassifier.from_pretrained(directory).backbone
        self.dim = self.backbone.config.hidden_size
        self.size = self.backbone.config.image_size

    def forward(self, images):
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.backbone(images)[1]


class DinoV2Encoder(nn.Module):
    """DINOv2's normalised patch tokens of images resized to 224 px per 256 px (bicubic) and
    normalised as ImageNet's, as REPA computes them. From torch.hub: facebookresearch/dinov2 (its cache in
    $TORCH_HOME/hub serves it offline), or a local copy of that repository (repository: a path)."""

    def __init__(self, name, repository=None):
        super().__init__()
        try:
            if repository is None:
                self.network = torch.hub.load("facebookresearch/dinov2", name, trust_repo=True)
            else:
                self.network = torch.hub.load(str(repository), name, source="local")
        except Exception as error:  # torch.hub raises whatever the download or the cache raises
            raise FileNotFoundError(f"the DINOv2 encoder {name} could not be loaded ({error}): torch.hub needs the "
                                    "internet once, or its cache ($TORCH_HOME/hub, with hub/checkpoints) copied from "
                                    "a machine that has loaded it, or a local copy of the facebookresearch/dinov2 "
                                    f"repository given as PATH/{name}; a vlgen classifier directory works offline") \
                from error
        self.dim = self.network.embed_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def forward(self, images):
        size = DINOV2_INPUT * max(1, images.shape[-1] // 256)  # REPA's 224 px per 256 px of image
        images = F.interpolate((images + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
        tokens = self.network.forward_features((images - self.mean) / self.std)["x_norm_patchtokens"]  # (N, T, D)
        grid = size // self.network.patch_size
        return tokens.transpose(1, 2).reshape(len(images), -1, grid, grid)


def load_encoder(spec, device="cpu"):
    """A frozen encoder in eval mode.

    Args:
        spec: a vlgen classifier directory (`vlgen train-classifier --out DIR`), a DINOv2 name
            (DINOV2_MODELS, through torch.hub) or PATH/NAME with PATH a local copy of the DINOv2
            hub repository.
        device: where it runs.

    Returns:
        nn.Module: images in [-1, 1] (N, 3, H, W) -> patch features (N, D, h, w); its `dim` is D
        and its `spec` the spec it was loaded from.

    Raises:
        ValueError: spec is none of these.
        FileNotFoundError: DINOv2 could not be loaded (offline without its hub cache).
    """
    path = Path(spec)
    if spec in DINOV2_MODELS:
        encoder = DinoV2Encoder(spec)
    elif path.name in DINOV2_MODELS and (path.parent / "hubconf.py").is_file():
        encoder = DinoV2Encoder(path.name, path.parent)
    elif path.is_dir() and (path / "config.json").is_file():
        encoder = ClassifierEncoder(spec)
    else:
        raise ValueError(f"encoder {spec!r} is neither a vlgen classifier directory (`vlgen train-classifier --out DIR`) "
                         f"nor a DINOv2 model ({', '.join(DINOV2_MODELS)}, or PATH/NAME with PATH a local copy of "
                         "facebookresearch/dinov2)")
    encoder.spec = spec
    return encoder.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_patches(encoder, images):
    """The encoder's patch feature map (N, D, h, w) of images in [-1, 1], in float32."""
    return encoder(images).float()
