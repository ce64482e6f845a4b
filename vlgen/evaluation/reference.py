"""Reference sets for FID: precomputed statistics (ADM reference batches, plain mu/sigma files) or
images (a folder, an npz of images, tensors), whose statistics are cached on disk."""
import hashlib
import os
from pathlib import Path

import numpy as np

from vlgen.core.atomic import atomic_path
from vlgen.evaluation.frechet import feature_statistics
from vlgen.evaluation.images import open_images

CACHE_ENV = "VLGEN_CACHE_DIR"
LAYERS = "pool3-2048+mixed_6-conv-7"  # part of the cache key: what the statistics are of


def default_cache_dir():
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "vlgen")) / "reference-statistics"


def _source_fingerprint(path):
    """Path, sizes and modification times of the file, or of every file under the folder."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256(str(path).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _statistics_of(features):
    mu, sigma = feature_statistics(features["pool"])
    mu_s, sigma_s = feature_statistics(features["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def _from_images(images, extractor, need_features, cache_dir, extract_options):
    cache_file = None
    if isinstance(images, (str, Path)) and cache_dir is not None:
        key = hashlib.sha256(f"{_source_fingerprint(images)}|{extractor.weights_id}|{LAYERS}".encode()).hexdigest()
        cache_file = Path(cache_dir) / f"{key[:32]}{'-features' if need_features else ''}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as cached:
                return {name: cached[name] for name in cached.files}
    features = extractor.extract(open_images(images), desc="reference features", **extract_options)
    reference = _statistics_of(features)
    if need_features:
        reference["features"] = features["pool"]
    if cache_file is not None:
        with atomic_path(cache_file) as temporary, temporary.open("wb") as file:
            np.savez(file, **reference)
    return reference


def load_reference(reference, extractor, *, need_features=False, cache_dir=None, **extract_options):
    """dict(mu, sigma[, mu_s, sigma_s][, features]) of a reference.

    reference: an .npz with `mu`/`sigma` (ADM reference batches also hold `mu_s`, `sigma_s` and the
    images in `arr_0`; other keys are ignored), an .npz of images, a folder, or images in memory.
    need_features: also return the pool features (KID and precision/recall compare feature sets,
    so they need reference images, not statistics). cache_dir: where statistics computed from
    images are kept, keyed by source, weights and layers (None: no cache).
    """
    if isinstance(reference, (str, Path)) and Path(reference).suffix == ".npz":
        if not Path(reference).is_file():
            raise FileNotFoundError(f"reference file {reference} does not exist")
        with np.load(reference) as data:
            keys = set(data.files)
            statistics = {name: data[name] for name in ("mu", "sigma", "mu_s", "sigma_s") if name in keys}
        if {"mu", "sigma"} <= keys:
            if need_features:
                if "arr_0" not in keys:
                    raise ValueError(f"KID and precision/recall compare images, but {reference} holds statistics only: "
                                     "pass reference images (a folder, or an npz with arr_0)")
                statistics["features"] = _from_images(reference, extractor, True, cache_dir, extract_options)["features"]
            return statistics
        if "arr_0" not in keys:
            raise ValueError(f"{reference} holds neither statistics (mu, sigma) nor images (arr_0); keys: {sorted(keys)}")
    return _from_images(reference, extractor, need_features, cache_dir, extract_options)
