"""FID-50K and companions under the ADM protocol: FID and sFID (our float64 Frechet distance, so
precomputed reference statistics work), IS and precision/recall (torch-fidelity's functions), KID
(torch-fidelity's estimator, computed on the evaluation device), and the metrics papers now report
beside them: FD-DINOv2 and CMMD (vlgen.evaluation.extractors)."""
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.defaults import DEFAULTS as FIDELITY_DEFAULTS
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from vlgen.evaluation.extractors import TorchFidelityFeatures, clip_embeddings, rbf_mmd, reference_features
from vlgen.evaluation.frechet import feature_statistics, frechet_distance
from vlgen.evaluation.images import open_images
from vlgen.evaluation.inception import InceptionFeatures
from vlgen.evaluation.reference import default_cache_dir, load_reference

METRICS = ("fid", "sfid", "isc", "kid", "prc", "fd_dinov2", "cmmd")
INCEPTION_METRICS = ("fid", "sfid", "isc", "kid", "prc")
# vlgen's result names -> torch-fidelity's (`vlgen fid --json`); sfid, fd_dinov2 and cmmd are vlgen's own.
FIDELITY_KEYS = {"fid": "frechet_inception_distance", "inception_score": "inception_score_mean",
                 "inception_score_std": "inception_score_std", "kid": "kernel_inception_distance_mean",
                 "kid_std": "kernel_inception_distance_std", "precision": "precision", "recall": "recall",
                 "f_score": "f_score"}
ADM_REFERENCE_NAME = re.compile(r"VIRTUAL_[a-z_]*?(\d+)(?:_labeled)?\.npz$")  # ADM's batches name their image size
SKEW_P_VALUE = 1e-6  # a class histogram less likely than this under uniform labels is a sampling bug
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
    counts as a difference in quality. The reference's size comes from its images, or from the name
    of an ADM reference batch (VIRTUAL_imagenet256_labeled.npz: 256 px)."""
    reference_size = None
    if isinstance(reference, (str, Path)) and (Path(reference).is_dir() or _holds_images(reference)):
        reference_size = open_images(reference).image_size
    elif isinstance(reference, (str, Path)) and (match := ADM_REFERENCE_NAME.search(Path(reference).name)):
        reference_size = (int(match.group(1)),) * 2
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


def fidelity_keys(results):
    """Results under torch-fidelity's names where it has the metric, vlgen's elsewhere."""
    return {FIDELITY_KEYS.get(name, name): value for name, value in results.items()}


def label_skew(path):
    """Why the labels (arr_1) of a samples npz are far from uniform, or None: chi-square against equal
    counts over the classes seen, p below SKEW_P_VALUE (uniform random labels of 50,000 samples
    over 1,000 classes stay far above it)."""
    from scipy.stats import chisquare

    if not (isinstance(path, (str, Path)) and Path(path).suffix == ".npz"):
        return None
    with np.load(path) as data:
        if "arr_1" not in data.files:
            return None
        labels = np.asarray(data["arr_1"]).astype(np.int64).ravel()
    if labels.size < 2 or labels.min() < 0:
        return None
    if np.unique(labels).size == 1:
        return f"every sample has class {labels[0]}"
    counts = np.bincount(labels)
    p_value = chisquare(counts).pvalue
    if p_value >= SKEW_P_VALUE:
        return None
    return (f"class counts range from {counts.min()} to {counts.max()} over {len(counts)} classes (chi-square p = "
            f"{p_value:.2g} under uniform labels)")


def kid_on_device(generated, reference, subsets, subset_size, device):
    """torch-fidelity's KID (the unbiased MMD^2 of a cubic polynomial kernel, gamma = 1 / D,
    coef0 = 1, over the same random subsets: its RandomState and seed) in float64 on the device."""
    x = torch.as_tensor(generated, dtype=torch.float64, device=device)
    y = torch.as_tensor(reference, dtype=torch.float64, device=device)
    gamma = 1.0 / x.shape[1]
    rng = np.random.RandomState(FIDELITY_DEFAULTS["rng_seed"])
    m = subset_size
    values = []
    for _ in range(subsets):
        a = x[torch.as_tensor(rng.choice(len(x), m, replace=False), device=device)]
        b = y[torch.as_tensor(rng.choice(len(y), m, replace=False), device=device)]
        k_aa, k_bb, k_ab = ((u @ v.T * gamma + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
        within = (k_aa.sum() - k_aa.diagonal().sum() + k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
        values.append(within - 2 * k_ab.sum() / (m * m))
    values = torch.stack(values)
    return float(values.mean()), float(values.std(unbiased=False))


def _check_reference(reference):
    """The reference's file or folder exists (checked before any network is loaded)."""
    if isinstance(reference, (str, Path)) and not Path(reference).exists():
        kind = "file" if Path(reference).suffix else "folder"
        raise FileNotFoundError(f"reference {kind} {reference} does not exist")


def _warn_about_the_generated_set(source, generated, count, compared):
    if count < FULL_SET and compared:
        warnings.warn(f"{count} generated images: this is FID-{count / 1000:g}K, not FID-50K; FID and sFID are biased "
                      f"upward below {FULL_SET:,} (the papers' protocol), so compare only numbers computed with the "
                      "same count", stacklevel=3)
    if source.lossy:
        warnings.warn("generated images include JPEG/WebP files: lossy compression changes FID; write PNG or npz",
                      stacklevel=3)
    skew = label_skew(generated)
    if skew is not None:
        warnings.warn(f"the generated set's labels are far from uniform ({skew}): a sampling bug that FID does not "
                      "show; sample with balanced or uniformly random labels", stacklevel=3)


def evaluate(generated, reference=None, metrics=("fid",), *, batch_size=50, device="cpu", inception_weights=None,
             num_workers=0, cache_dir="default", kid_subset_size=1000, kid_subsets=100, progress=True,
             extractor=None, clip_weights=None):
    """Metrics of generated images against a reference, under the ADM protocol.

    The inputs are checked before any network is loaded.

    Args:
        generated: an image folder, an ADM-format .npz (uint8 NHWC arr_0, streamed) or images in
            memory (a uint8 (N, 3, H, W) tensor or an iterable of float batches in [-1, 1]).
        reference: see `load_reference` (statistics .npz, images .npz, folder); not needed for
            "isc"; fd_dinov2 and cmmd need reference images.
        metrics: names of METRICS: fid, sfid, isc, kid, prc, fd_dinov2, cmmd.
        batch_size: images per feature-network call.
        device: where the feature networks run.
        inception_weights: a local file of the FID Inception weights (default: torch-fidelity's download).
        num_workers: image-decoding processes.
        cache_dir: where reference statistics and features computed from images are kept
            ("default": ~/.cache/vlgen or $VLGEN_CACHE_DIR; None: no cache).
        kid_subset_size: images per KID subset.
        kid_subsets: KID subsets.
        progress: show progress bars.
        extractor: the Inception feature extractor to use instead of loading one.
        clip_weights: a local file of the CLIP weights for cmmd.

    Returns:
        dict: floats under vlgen's names (`fidelity_keys` gives torch-fidelity's).
    """
    metrics = parse_metrics(metrics)
    compared = [name for name in metrics if name != "isc"]
    if compared and reference is None:
        raise ValueError(f"{', '.join(compared)} compare against a reference: pass reference images or statistics")
    source = open_images(generated)
    _check_reference(reference)
    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    cache = default_cache_dir() if cache_dir == "default" else cache_dir
    results = {}
    inception = [name for name in metrics if name in INCEPTION_METRICS]
    if inception:
        extractor = extractor or InceptionFeatures(device, inception_weights)
        if any(name != "isc" for name in inception):  # read (and checked) before the long generated extraction
            ref = load_reference(reference, extractor, need_features="kid" in metrics or "prc" in metrics,
                                 cache_dir=cache, **options)
            _warn_if_sizes_differ(source, reference)
        features = extractor.extract(source, desc="generated features", **options)
        check_features(features, "generated")
        results["num_images"] = count = len(features["pool"])
        if count < 2:
            raise ValueError(f"metrics need at least 2 generated images, got {count}")
        _warn_about_the_generated_set(source, generated, count, compared)
        results.update(_inception_metrics(inception, features, ref if compared else None, kid_subset_size,
                                          kid_subsets, device))
    for name in (name for name in metrics if name not in INCEPTION_METRICS):
        network = TorchFidelityFeatures(name, device, clip_weights if name == "cmmd" else None)
        reference_set = reference_features(reference, network, cache, **options)
        generated_set = network.extract(open_images(generated), desc=f"generated {network.feature} features",
                                        **options)
        results.setdefault("num_images", len(generated_set))
        if name == "fd_dinov2":
            results["fd_dinov2"] = frechet_distance(*feature_statistics(generated_set),
                                                    *feature_statistics(reference_set))
        else:
            results["cmmd"] = rbf_mmd(torch.as_tensor(clip_embeddings(generated_set), device=device),
                                      torch.as_tensor(clip_embeddings(reference_set), device=device))
    return results


def _inception_metrics(metrics, features, ref, kid_subset_size, kid_subsets, device):
    results = {}
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
    if "kid" in metrics:
        subset = min(kid_subset_size, len(features["pool"]), len(ref["features"]))
        results["kid"], results["kid_std"] = kid_on_device(features["pool"], ref["features"], kid_subsets, subset,
                                                           device)
    if "prc" in metrics:  # torch-fidelity's function runs where its inputs are
        prc = prc_features_to_metric(torch.from_numpy(features["pool"]).to(device),
                                     torch.from_numpy(ref["features"]).to(device), prc_neighborhood=PRC_NEIGHBOURS,
                                     verbose=False)
        results["precision"], results["recall"], results["f_score"] = prc["precision"], prc["recall"], prc["f_score"]
    return results
