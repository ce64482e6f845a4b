import numpy as np
import pytest
import torch

from vlgen.evaluation.generation_metrics import generation_metrics

NUM_CLASSES = 5


def colour_images(labels, seed, shift=0.0):
    """Flat images whose red level is the class (c / 10) and whose green and blue levels are
    N(0, 0.1^2) noise; shift moves every green level."""
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    levels = torch.stack([labels / 10, 0.1 * torch.randn(n, generator=generator) + shift,
                          0.1 * torch.randn(n, generator=generator)], dim=1)
    return levels[:, :, None, None].expand(n, 3, 4, 4).clone()


def mean_colour_judge(images):
    """Predicts the class from the red level; its features are the mean colour."""
    features = images.mean(dim=(2, 3))
    return torch.round(features[:, 0] * 10).long(), features


def labels_of(n):
    return torch.arange(n) % NUM_CLASSES


def test_a_perfect_generator_scores_accuracy_one_and_distance_near_zero():
    labels = labels_of(4000)
    metrics = generation_metrics(mean_colour_judge, colour_images(labels, seed=1), labels,
                                 colour_images(labels, seed=2))
    assert metrics["class_accuracy"] == 1.0
    assert metrics["per_class_accuracy"] == {c: 1.0 for c in range(NUM_CLASSES)}
    assert metrics["feature_frechet_distance"] < 1e-3  # sampling error only: O(D / N) * 0.01


def test_distance_is_the_closed_form_of_a_mean_shift_and_wrong_classes_score_zero():
    labels = labels_of(4000)
    real = colour_images(labels, seed=2)
    shifted = generation_metrics(mean_colour_judge, colour_images(labels, seed=1, shift=0.5), labels, real)
    # Gaussians with equal covariance: the Frechet distance is |mu1 - mu2|^2 = 0.5^2.
    assert shifted["feature_frechet_distance"] == pytest.approx(0.25, abs=0.01)
    assert shifted["class_accuracy"] == 1.0
    wrong = generation_metrics(mean_colour_judge, colour_images((labels + 1) % NUM_CLASSES, seed=1), labels, real)
    assert wrong["class_accuracy"] == 0.0
    # The red levels of the wrong images have the same marginal distribution: nearly no distance.
    assert wrong["feature_frechet_distance"] < 1e-3


def test_per_class_accuracy_counts_each_class():
    labels = labels_of(100)
    generated = colour_images(labels, seed=1)
    generated[labels == 3, 0] = 0.0  # class 3 drawn as class 0
    metrics = generation_metrics(mean_colour_judge, generated, labels, colour_images(labels, seed=2))
    assert metrics["per_class_accuracy"][3] == 0.0 and metrics["per_class_accuracy"][0] == 1.0
    assert metrics["class_accuracy"] == pytest.approx(0.8)
    assert np.isfinite(metrics["feature_frechet_distance"])


def test_mismatched_inputs_are_clear_errors():
    labels = labels_of(10)
    images = colour_images(labels, seed=1)
    with pytest.raises(ValueError, match="one label per generated image"):
        generation_metrics(mean_colour_judge, images, labels[:5], images)
    with pytest.raises(ValueError, match="same size"):
        generation_metrics(mean_colour_judge, images, labels, images[:, :, :2])
