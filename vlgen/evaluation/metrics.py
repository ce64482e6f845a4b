"""FID-50K and companions under the ADM protocol: FID and sFID (our float64 Frechet distance, so
precomputed reference statistics work), IS, KID and precision/recall (torch-fidelity's functions)."""
import warnings
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from vlgen.evaluation.frechet import feature_statistics, frechet_distance
from vlgen.evaluation.images import open_images
from vlgen.evaluation.inception import InceptionFeatures
from vlgen.evaluation.reference import default_cache_dir, load_reference

METRICS = ("fid", "sfid", "isc", "kid", "prc")
FULL_SET = 50_000  # the papers' FID-50K
IS_SPLITS = 10  # ADM: splits of 5,000 in order (no shuffle); 10 of them for 50K images
PRC_NEIGHBOURS = 3
MIN_FEATURE_SCALE = 1e-3  # mean |pool feature| below which the network is not the FID Inception


def check_features(features, what):
    """Refuse features no FID Inception gives: its pool features are averages of ReLU activations,
    of order 0.1 to 1; nearly zero ones come from other weights (random, uncalibrated, corrupt), and
    FID computed from them is near 0 whatever the images. Warn when every image gives the same
    features (a generator that makes one image)."""
    pool = np.asarray(features["pool"], dtype=np.float64)
    scale = float(np.abs(pool).mean())
    if not scale >= MIN_FEATURE_SCALE:
        raise ValueError(f"the Inception features of the {what} images are nearly zero (mean |feature| {scale:.2g}, "
                         f"expected 0.1 to 1): these weights are not the FID Inception network, and every metric "
                         f"computed with them would mean nothing; use torch-fidelity's "
                         f"weights-inception-2015-12-05-6726825d.pth (--inception-weights)")
    if len(pool) > 1 and float(pool.std(axis=0).max()) <= 1e-6 * scale:
        warnings.warn(f"all {len(pool)} {what} images give the same Inception features: are they one image?",
                      stacklevel=3)


def _warn_if_sizes_differ(generated, reference):
    """Inception resizes every image to 299 px, so sets of different sizes differ in blur, which FID
    counts as a difference in quality."""
    reference_size = None
    if isinstance(reference, (str, Path)) and (Path(reference).is_dir() or _holds_images(reference)):
        reference_size = open_images(reference).image_size
    if None not in (generated.image_size, reference_size) and generated.image_size != reference_size:
        (gh, gw), (rh, rw) = generated.image_size, reference_size
        warnings.warn(f"generated images are {gh}x{gw} and reference images {rh}x{rw}: FID across sizes measures "
                      "the resizing as much as the images; compare sets of one size", stacklevel=3)


def _holds_images(path):
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path) as data:
        return "arr_0" in data.files


def parse_metrics(metrics):
    """"fid,isc" or an iterable -> a tuple of known metric names."""
    names = tuple(name.strip().lower() for name in (metrics.split(",") if isinstance(metrics, str) else metrics))
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
    return names


def evaluate(generated, reference=None, metrics=("fid",), *, batch_size=50, device="cpu", inception_weights=None,
             num_workers=0, cache_dir="default", kid_subset_size=1000, kid_subsets=100, progress=True,
             extractor=None):
    """Metrics of generated images against a reference; returns a dict of floats.

    generated: an image folder, an ADM-format .npz (uint8 NHWC arr_0, streamed) or images in memory
    (a uint8 (N, 3, H, W) tensor or an iterable of float batches in [-1, 1]).
    reference: see `load_reference` (statistics .npz, images .npz, folder); not needed for "isc".
    cache_dir: where reference statistics computed from images are kept ("default": ~/.cache/vlgen
    or $VLGEN_CACHE_DIR; None: no cache).
    """
    metrics = parse_metrics(metrics)
    compared = [name for name in metrics if name != "isc"]
    if compared and reference is None:
        raise ValueError(f"{', '.join(compared)} compare against a reference: pass reference images or statistics")
    extractor = extractor or InceptionFeatures(device, inception_weights)
    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    source = open_images(generated)
    if compared:  # the reference is read (and checked) before the long extraction of the generated set
        cache = default_cache_dir() if cache_dir == "default" else cache_dir
        ref = load_reference(reference, extractor, need_features="kid" in metrics or "prc" in metrics,
                             cache_dir=cache, **options)
        _warn_if_sizes_differ(source, reference)
    features = extractor.extract(source, desc="generated features", **options)
    count = len(features["pool"])
    check_features(features, "generated")
    if count < 2:
        raise ValueError(f"metrics need at least 2 generated images, got {count}")
    if count < FULL_SET and compared:
        warnings.warn(f"{count} generated images: FID and sFID are biased upward below {FULL_SET:,} (FID-50K is the "
                      "papers' protocol), so compare only numbers computed with the same count", stacklevel=2)
    if source.lossy:
        warnings.warn("generated images include JPEG/WebP files: lossy compression changes FID; write PNG or npz",
                      stacklevel=2)

    results = {"num_images": count}
    if "fid" in metrics:
        results["fid"] = frechet_distance(*feature_statistics(features["pool"]), ref["mu"], ref["sigma"])
    if "sfid" in metrics:
        if "mu_s" not in ref:
            raise ValueError("sFID needs spatial reference statistics (mu_s, sigma_s): pass reference images or an "
                             "ADM reference batch")
        results["sfid"] = frechet_distance(*feature_statistics(features["spatial"]), ref["mu_s"], ref["sigma_s"])
    if "isc" in metrics:
        isc = isc_features_to_metric(torch.from_numpy(features["logits"]), splits=IS_SPLITS, shuffle=False)
        results["inception_score"], results["inception_score_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    if "kid" in metrics or "prc" in metrics:
        generated_pool, reference_pool = torch.from_numpy(features["pool"]), torch.from_numpy(ref["features"])
    if "kid" in metrics:
        subset = min(kid_subset_size, len(generated_pool), len(reference_pool))
        kid = kid_features_to_metric(generated_pool, reference_pool, kid_subsets=kid_subsets, kid_subset_size=subset,
                                     verbose=False)
        results["kid"], results["kid_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
    if "prc" in metrics:
        prc = prc_features_to_metric(generated_pool, reference_pool, prc_neighborhood=PRC_NEIGHBOURS, verbose=False)
        results["precision"], results["recall"] = prc["precision"], prc["recall"]
    return results
