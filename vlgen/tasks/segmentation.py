"""Semantic segmentation on VisionLLaMA backbones with a Semantic FPN head (Kirillov et al. 2019):
torchvision's FeaturePyramidNetwork over the 4 backbone maps, then each level is brought to the
finest stride by (3x3 conv, GroupNorm, ReLU, 2x upsampling) stages, the levels are summed, a 1x1
convolution classifies every pixel and the logits are upsampled bilinearly to the image size.
"""
import math
from collections import OrderedDict

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FeaturePyramidNetwork

from vlgen.tasks.fitting import batches, fit
from vlgen.tasks.multiscale import create_multiscale_backbone

IGNORE_INDEX = 255  # mask id of pixels without a label (no loss, no score)


def _conv_gn_relu(channels):
    groups = math.gcd(32, max(channels // 8, 1))  # 32 groups of 8 at the usual 256 channels; >= 8 channels a group
    return [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels),
            nn.ReLU(inplace=True)]


class SemanticFPNHead(nn.Module):
    """forward(features (tuple of maps at strides s_i), size) -> logits (N, num_classes, *size)."""

    def __init__(self, in_channels, strides, channels, num_classes):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            doublings = round(math.log2(stride / strides[0]))
            layers = []
            for _ in range(max(1, doublings)):  # a conv before every 2x upsampling (one for the finest level)
                layers += _conv_gn_relu(channels)
                if doublings:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features, size):
        levels = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values()
        finest = features[0].shape[-2:]  # coarse maps of odd-sized grids can be a pixel short after upsampling
        fused = sum(F.interpolate(head(level), size=finest, mode="bilinear", align_corners=False)
                    for head, level in zip(self.scale_heads, levels))
        return F.interpolate(self.classifier(fused), size=size, mode="bilinear", align_corners=False)


class VisionLLaMASegmenter(ModelMixin, ConfigMixin):
    """Semantic segmentation on a VisionLLaMA backbone with an FPN head.

    forward(images (N, C, H, W)) returns per-pixel logits (N, num_classes, H, W).

    Args:
        num_classes: every mask id, background included.
        backbone_type: "pyramid" (PyramidVisionLLaMA) or "plain" (VisionLLaMA with a simple
            feature pyramid).
        backbone_config: the backbone's constructor arguments.
        head_channels: channels of the FPN head.
    """

    @register_to_config
    def __init__(self, num_classes: int = 150, backbone_type: str = "pyramid", backbone_config: dict | None = None,
                 head_channels: int = 128):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"segmentation needs at least 2 classes (background included), got {num_classes}")
        self.backbone = create_multiscale_backbone(backbone_type, backbone_config or {})
        self.head = SemanticFPNHead(self.backbone.out_channels, self.backbone.strides, head_channels, num_classes)

    def forward(self, images):
        return self.head(self.backbone(images), images.shape[-2:])


def check_masks(masks, num_classes, image_shape=None):
    """Masks must be integer (N, H, W) class ids in [0, num_classes) or IGNORE_INDEX, of the images' size."""
    if masks.dtype.is_floating_point or masks.dtype == torch.bool:
        raise ValueError(f"masks must hold integer class ids, got dtype {masks.dtype}")
    if image_shape is not None and masks.shape != (image_shape[0], *image_shape[-2:]):
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not match images {tuple(image_shape)}: "
                         "expected (N, H, W)")
    bad = (masks < 0) | ((masks >= num_classes) & (masks != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"mask id {int(masks[bad][0])} is out of range: ids must be in [0, {num_classes}) or "
                         f"{IGNORE_INDEX} (ignored); remap the dataset's ids or set num_classes")


def segmentation_loss(model, images, masks, num_classes):
    """Per-pixel cross-entropy, IGNORE_INDEX pixels left out."""
    check_masks(masks, num_classes, images.shape)
    return F.cross_entropy(model(images), masks, ignore_index=IGNORE_INDEX)


def _collate(items):
    return torch.stack([item["x"] for item in items]), torch.stack([item["mask"] for item in items])


def train_segmenter(model, dataset, *, steps=300, batch_size=16, lr=1e-3, weight_decay=0.05, warmup_steps=20, seed=0,
                    num_workers=0, accelerator=None, progress=True):
    """Train on dataset items {"x": (C, H, W), "mask": (H, W) ids} (e.g. ShapeScenes). Returns the losses."""
    if model.config.num_classes != dataset.num_classes + 1:
        raise ValueError(f"the model has {model.config.num_classes} mask ids, the dataset {dataset.num_classes} "
                         "classes plus background")
    num_classes = model.config.num_classes
    return fit(model, batches(dataset, _collate, batch_size, shuffle=True, seed=seed, num_workers=num_workers),
               lambda m, batch: segmentation_loss(m, *batch, num_classes), steps=steps, lr=lr, weight_decay=weight_decay,
               warmup_steps=warmup_steps, seed=seed, accelerator=accelerator, progress=progress, desc="segmenter")


@torch.no_grad()
def segment(model, images):
    """Predicted mask ids (N, H, W) of images (N, C, H, W) in [-1, 1]."""
    model.eval()
    return model(images.to(model.device, model.dtype)).argmax(1).cpu()


def confusion_matrix(predicted, target, num_classes):
    """(num_classes, num_classes) counts, rows = true id, columns = predicted; IGNORE_INDEX left out."""
    keep = target != IGNORE_INDEX
    index = target[keep] * num_classes + predicted[keep]
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mean_iou(confusion):
    """(mIoU over the classes that occur in the target or the prediction, per-class IoU with NaN for absent ones)."""
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    iou = intersection / union  # NaN where union is 0
    return float(iou[union > 0].mean()), iou.tolist()


def evaluate_segmenter(model, dataset, batch_size=32, num_workers=0):
    """{"miou", "pixel_accuracy", "iou" (per id)} of model on every item of dataset."""
    num_classes = model.config.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, masks in batches(dataset, _collate, batch_size, shuffle=False, seed=0, num_workers=num_workers):
        check_masks(masks, num_classes, images.shape)
        confusion += confusion_matrix(segment(model, images), masks, num_classes)
    miou, iou = mean_iou(confusion)
    return {"miou": miou, "pixel_accuracy": float(confusion.diag().sum() / confusion.sum()), "iou": iou}

