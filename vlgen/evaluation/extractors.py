"""The feature networks of the metrics papers report beside FID, through torch-fidelity's extractors:
DINOv2 ViT-L/14 for FD-DINOv2 (Stein et al. 2023; EDM2) and CLIP ViT-L/14 at 336 px for CMMD
(Jayasumana et al. 2024).

Preprocessing is torch-fidelity's: uint8 images resized to the network's input (224 for DINOv2,
336 for CLIP) with TensorFlow-1-style bilinear interpolation, then normalised with the network's
mean and standard deviation. dgm-eval (Stein et al.'s code) resizes to 224 with bicubic
interpolation, and CMMD's reference code with CLIP's own processor (bicubic and a centre crop), so
their values are close to but not interchangeable with these: compare numbers computed one way.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.utils import create_feature_extractor
from tqdm.auto import tqdm

from vlgen.core.atomic import atomic_path
from vlgen.core.precision import ieee_fp32
from vlgen.evaluation.images import open_images

# metric -> (torch-fidelity extractor, its feature, how an offline machine provides the weights)
EXTRACTORS = {
    "fd_dinov2": ("dinov2-vit-l-14", "dinov2",
                  "DINOv2 comes from torch.hub (facebookresearch/dinov2 and its dinov2_vitl14 weights): on a machine "
                  "without internet, copy a populated torch hub cache ($TORCH_HOME/hub, default ~/.cache/torch/hub) "
                  "from one that has run it"),
    "cmmd": ("clip-vit-l-14-336px", "clip",
             "pass the CLIP ViT-L/14@336px TorchScript file torch-fidelity downloads (--clip-weights PATH, or "
             "VLGEN_CLIP_WEIGHTS)"),
}
CLIP_WEIGHTS_ENV = "VLGEN_CLIP_WEIGHTS"


class TorchFidelityFeatures:
    """Features of uint8 image batches from one of torch-fidelity's extractors, in IEEE float32."""

    def __init__(self, metric, device="cpu", weights=None):
        name, self.feature, offline = EXTRACTORS[metric]
        weights = weights or (os.environ.get(CLIP_WEIGHTS_ENV) if metric == "cmmd" else None)
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"{metric} weights {weights} do not exist")
        try:
            self.network = create_feature_extractor(name, [self.feature], cuda=False,
                                                    feature_extractor_weights_path=weights, verbose=False)
        except (OSError, RuntimeError) as error:  # no network, no cache
            raise FileNotFoundError(f"the {name} network for {metric} could not be loaded ({error}): {offline}") \
                from error
        self.network.to(device)
        self.device = torch.device(device)
        self.id = f"{name}:{weights or 'download'}"

    @torch.no_grad()
    def __call__(self, images):
        with ieee_fp32():
            (features,) = self.network(images.to(self.device))
        return features

    def extract(self, source, batch_size=50, num_workers=0, progress=True, desc="features"):
        parts = []
        with tqdm(total=source.count, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for batch in source.batches(batch_size, num_workers):
                parts.append(self(batch).cpu().numpy())
                bar.update(batch.shape[0])
        return np.concatenate(parts).astype(np.float64)


def reference_features(reference, extractor, cache_dir=None, **extract_options):
    """The features of reference images (a folder or an npz with arr_0) for an extractor, cached
    on disk by source and extractor."""
    if isinstance(reference, (str, Path)) and Path(reference).suffix == ".npz":
        with np.load(reference) as data:
            if "arr_0" not in data.files:
                raise ValueError(f"{reference} holds statistics only, but {extractor.id.split(':')[0]} features need the "
                                 "reference images: pass a folder, or an npz with arr_0 (ADM reference batches have "
                                 "them)")
    cache_file = None
    if isinstance(reference, (str, Path)) and cache_dir is not None:
        path = Path(reference).resolve()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256(f"{extractor.id}|{path}".encode())
        for file in files:
            digest.update(f"{file}:{file.stat().st_size}:{file.stat().st_mtime_ns}".encode())
        cache_file = Path(cache_dir) / f"{digest.hexdigest()[:32]}-{extractor.feature}.npy"
        if cache_file.is_file():
            return np.load(cache_file)
    features = extractor.extract(open_images(reference), desc="reference features", **extract_options)
    if cache_file is not None:
        with atomic_path(cache_file) as temporary, temporary.open("wb") as file:
            np.save(file, features)
    return features


def rbf_mmd(x, y, sigma=10.0, scale=1000.0, block=4096):
    """CMMD's distance: scale * MMD^2 of x and y (N, D) under the Gaussian kernel exp(-|a - b|^2 /
    (2 sigma^2)), the biased estimate over all pairs as CMMD's reference code computes it, in
    float64 and in blocks (50,000 x 50,000 kernels never exist whole)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    gamma = 1.0 / (2 * sigma**2)

    def mean_kernel(a, b):
        total = torch.zeros((), dtype=torch.float64, device=a.device)
        for start in range(0, len(a), block):
            part = a[start:start + block]
            distances = (part.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * part @ b.T).clamp_min(0)
            total += torch.exp(-gamma * distances).sum()
        return total / (len(a) * len(b))

    return float(scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)))


def clip_embeddings(features):
    """CLIP image embeddings scaled to unit length, as CMMD compares them."""
    return features / np.linalg.norm(features, axis=1, keepdims=True)
