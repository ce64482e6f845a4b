"""Image classification on the plain VisionLLaMA backbone: a Linear head on the class token."""
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from vlgen.models.sizes import sized_config
from vlgen.models.vision_llama import PLAIN_SIZES, VisionLLaMA
from vlgen.tasks.fitting import fit


class VisionLLaMAClassifier(ModelMixin, ConfigMixin):
    """An image classifier on a VisionLLaMA backbone: forward(images) returns logits (N, num_classes).

    Args:
        num_classes: classes of the head.
        backbone_config: VisionLLaMA's constructor arguments (image_size, patch_size, widths, ...).
    """

    @register_to_config
    def __init__(self, num_classes: int = 1000, backbone_config: dict | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.backbone = VisionLLaMA(**(backbone_config or {}))
        self.head = nn.Linear(self.backbone.config.hidden_size, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, images):
        """The normalised class token (N, D): what the head classifies."""
        return self.backbone(images)[0]

    def forward(self, images):
        return self.head(self.features(images))


def create_classifier(size, num_classes=1000, **backbone_overrides):
    """A classifier of a paper size ("S", "B", "L"), e.g. create_classifier("S", 10, image_size=32, patch_size=4)."""
    return VisionLLaMAClassifier(num_classes, sized_config(PLAIN_SIZES, size, "VisionLLaMA", **backbone_overrides))


class _Items(torch.utils.data.Dataset):
    """(index, flip) pairs for a shapes / image-folder dataset: index i, mirrored when flips[i]."""

    def __init__(self, dataset, flips):
        self.dataset, self.flips = dataset, flips

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[(i, bool(self.flips[i]))]
        return item["x"], item["y"]


def _loader(dataset, batch_size, seed, shuffle, random_flip, num_workers):
    generator = torch.Generator().manual_seed(seed)
    flips = torch.rand(len(dataset), generator=generator) < 0.5 if random_flip else torch.zeros(len(dataset), dtype=torch.bool)
    return torch.utils.data.DataLoader(_Items(dataset, flips), batch_size=batch_size, shuffle=shuffle,
                                       generator=generator, num_workers=num_workers, drop_last=shuffle)


def train_classifier(model, dataset, *, steps=300, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_steps=20,
                     seed=0, random_flip=True, num_workers=0, accelerator=None, progress=True):
    """Train model on dataset (items {"x", "y"} by (index, flip), e.g. ShapesDataset or
    ImageDataset) with cross-entropy (vlgen.tasks.fitting.fit). Returns the per-step losses."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if model.head.out_features != dataset.num_classes:
        raise ValueError(f"the model has {model.head.out_features} classes, the dataset {dataset.num_classes}")
    loader = _loader(dataset, batch_size, seed, True, random_flip, num_workers)
    return fit(model, loader, lambda m, batch: F.cross_entropy(m(batch[0]), batch[1]), steps=steps, lr=lr,
               weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed, accelerator=accelerator,
               progress=progress, desc="classifier")


@torch.no_grad()
def classify(model, images, batch_size=256):
    """(predicted class ids, features) of images (N, C, H, W) in [-1, 1]."""
    model.eval()
    predictions, features = [], []
    for batch in images.split(batch_size):
        feature = model.features(batch.to(model.device, model.dtype))
        predictions.append(model.head(feature).argmax(-1).cpu())
        features.append(feature.float().cpu())
    return torch.cat(predictions), torch.cat(features)


def accuracy(model, dataset, batch_size=256, num_workers=0):
    """Top-1 accuracy of model on every item of dataset (no flips)."""
    correct = 0
    for images, labels in _loader(dataset, batch_size, 0, False, False, num_workers):
        correct += int((classify(model, images, batch_size)[0] == labels).sum())
    return correct / len(dataset)

