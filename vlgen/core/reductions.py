"""Reductions of per-element terms to per-sample values, shared by the training objectives."""


def mean_flat(x):
    """The mean over every dimension but the first: (N, ...) -> (N,)."""
    return x.mean(dim=list(range(1, x.ndim)))
