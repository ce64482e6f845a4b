"""The Frechet distance against closed forms, singular covariances and bad input."""
import numpy as np
import pytest
import scipy.linalg

from vlgen.evaluation import feature_statistics, frechet_distance

RNG = np.random.default_rng(0)


def random_covariance(dim, rank=None):
    factor = RNG.standard_normal((dim, rank or dim))
    return factor @ factor.T


def test_identical_gaussians_have_distance_zero():
    mu, sigma = RNG.standard_normal(6), random_covariance(6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)


def test_equal_covariances_leave_the_squared_mean_difference():
    mu1, mu2, sigma = RNG.standard_normal(6), RNG.standard_normal(6), random_covariance(6)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_diagonal_covariances_sum_squared_root_differences():
    a, b = RNG.uniform(0.1, 3, 6), RNG.uniform(0.1, 3, 6)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(6), np.diag(a), np.zeros(6), np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_distance_is_invariant_under_a_rotation():
    mu1, mu2, sigma1, sigma2 = RNG.standard_normal(5), RNG.standard_normal(5), random_covariance(5), random_covariance(5)
    rotation, _ = np.linalg.qr(RNG.standard_normal((5, 5)))
    rotated = frechet_distance(rotation @ mu1, rotation @ sigma1 @ rotation.T, rotation @ mu2, rotation @ sigma2 @ rotation.T)
    assert rotated == pytest.approx(frechet_distance(mu1, sigma1, mu2, sigma2), rel=1e-9)


def test_scaled_covariance_gives_one_minus_c_squared_trace():
    sigma, c = random_covariance(5), 0.3
    assert frechet_distance(np.zeros(5), sigma, np.zeros(5), c**2 * sigma) == pytest.approx((1 - c) ** 2 * np.trace(sigma), rel=1e-9)


def test_singular_pair_where_scipy_sqrtm_fails():
    a = np.array([[4.0, -2, 0], [-2, 1, 0], [0, 0, 0]])
    b = np.array([[5.0, 3, 1], [3, 5, -1], [1, -1, 1]])
    with np.errstate(all="ignore"), pytest.warns(scipy.linalg.LinAlgWarning):
        assert np.isnan(scipy.linalg.sqrtm(a @ b)).any()
    assert frechet_distance(np.zeros(3), a, np.zeros(3), b) == pytest.approx(16 - 2 * np.sqrt(13), rel=1e-9)


def test_identical_rank_deficient_covariances_are_near_zero_never_negative():
    for _ in range(20):
        sigma = random_covariance(30, rank=3) * 1e3
        distance = frechet_distance(np.ones(30), sigma, np.ones(30), sigma)
        assert 0 <= distance < 1e-6


def test_statistics_and_distance_reject_bad_input():
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_statistics(np.zeros((1, 8)))
    with pytest.raises(ValueError, match="NaN or inf"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(5), np.eye(5))
