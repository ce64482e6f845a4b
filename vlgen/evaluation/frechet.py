"""Gaussian statistics of feature sets and the Frechet distance between them, in float64."""
import numpy as np


def feature_statistics(features):
    """(mu, sigma) of (N, D) features, float64; sigma is the unbiased covariance (as ADM and
    torch-fidelity compute it)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"statistics need at least 2 images, got {features.shape[0]}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf: the images or the feature network weights are broken")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix):
    """Symmetric square root of a symmetric PSD matrix; negative round-off eigenvalues become 0."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), clamped at >= 0.

    tr (S1 S2)^(1/2) is the sum of square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), a
    symmetric PSD matrix: only symmetric eigen-decompositions, so singular covariances (fewer
    images than dimensions) stay finite where scipy's sqrtm can return NaN.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}; both sides "
            "must come from the same feature layer (e.g. 2048-d pool features for FID, 2023-d spatial for sFID)"
        )
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or inf")
    sqrt_sigma1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
    product = sqrt_sigma1 @ ((sigma2 + sigma2.T) / 2) @ sqrt_sigma1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt))
