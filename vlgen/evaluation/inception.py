"""torch-fidelity's `inception-v3-compat` network (the TF FID Inception) as ADM's evaluator uses it:
pool features (FID, KID, precision/recall), bias-free logits (IS) and the spatial features of sFID."""
import os
import urllib.error
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.utils import create_feature_extractor
from tqdm.auto import tqdm

from vlgen.core.precision import ieee_fp32
from vlgen.core.tensor_files import load_tensor_file

WEIGHTS_ENV = "VLGEN_INCEPTION_WEIGHTS"
# ADM's sFID: the first 7 channels of TF's mixed_6/conv (torch-fidelity's Mixed_6d.branch1x1 after
# BN and ReLU), 17 x 17 x 7, flattened in NHWC order.
SPATIAL_CHANNELS = 7


def hub_weights_path():
    """Where torch-fidelity's download lands (torch hub cache), and where an offline copy can go."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name


def resolve_weights(path=None):
    """The weights file to load: `path`, else $VLGEN_INCEPTION_WEIGHTS, else the hub cache copy;
    None when torch-fidelity has to download it. A given file must be a plain state dict
    (checked with torch.load(weights_only=True) before torch-fidelity reads it)."""
    path = path or os.environ.get(WEIGHTS_ENV)
    if not path:
        cached = hub_weights_path()
        return cached if cached.is_file() else None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} do not exist (from --inception-weights or ${WEIGHTS_ENV})")
    load_tensor_file(path)
    return path


class InceptionFeatures:
    """Extracts dict(pool (N, 2048), logits (N, 1008), spatial (N, 2023)) from uint8 image batches."""

    def __init__(self, device="cpu", weights=None):
        weights = resolve_weights(weights)
        self.weights_id = f"{weights.resolve()}:{weights.stat().st_size}" if weights else URL_INCEPTION_V3
        try:
            self.network = create_feature_extractor(
                "inception-v3-compat", ["2048", "logits_unbiased"], cuda=False,
                feature_extractor_weights_path=None if weights is None else str(weights), verbose=False,
            )
        except (urllib.error.URLError, OSError) as error:
            raise FileNotFoundError(
                f"the Inception weights could not be downloaded ({error}). Fetch {URL_INCEPTION_V3} on a machine "
                f"with internet, then put it at {hub_weights_path()}, or pass --inception-weights PATH (or set "
                f"${WEIGHTS_ENV})"
            ) from error
        self.device = torch.device(device)
        self.network.to(self.device)
        self._spatial = None
        self.network.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # (N, 17*17*7), NHWC

    @torch.no_grad()
    def __call__(self, images):
        with ieee_fp32():
            pool, logits = self.network(images.to(self.device))
        return {"pool": pool, "logits": logits, "spatial": self._spatial.float()}

    def extract(self, source, batch_size=50, num_workers=0, progress=True, desc="Inception features"):
        """Features of every image of a source (see vlgen.evaluation.images) as float32 numpy arrays."""
        parts = {"pool": [], "logits": [], "spatial": []}
        with tqdm(total=source.count, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for batch in source.batches(batch_size, num_workers):
                for name, value in self(batch).items():
                    parts[name].append(value.cpu().numpy())
                bar.update(batch.shape[0])
        if not parts["pool"]:
            raise ValueError("the image source is empty")
        return {name: np.concatenate(values) for name, values in parts.items()}


class _UnloadedInceptionV3(FeatureExtractorInceptionV3):
    """The network with its random initial weights: the empty state dict it is built from loads
    nothing."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return super().load_state_dict(state_dict, strict=False, assign=assign)


def save_random_inception_weights(path, seed=0, calibrate=True):
    """Write random inception-v3-compat weights for offline smoke tests and speed measurements
    without the real file; metrics computed with them mean nothing. calibrate: set the BatchNorm
    statistics from random images so that features vary (uncalibrated, the features are nearly
    zero and `evaluate` refuses them)."""
    path = Path(path)
    torch.manual_seed(seed)
    torch.save({}, path)
    network = _UnloadedInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    if calibrate:
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # a plain average over the calibration batch
        with torch.no_grad():
            network.train()((torch.rand(8, 3, 64, 64) * 255).to(torch.uint8))
    torch.save(network.state_dict(), path)
    return path
