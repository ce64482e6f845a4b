"""How well a class-conditional generator does, judged by a classifier trained on real images:
the share of generated images the classifier assigns to their conditioning class, and the Frechet
distance between classifier features of generated and real images. The latter is FID's formula
in another feature space, so its values do not compare with FID's."""
import numpy as np
import torch

from vlgen.evaluation.frechet import feature_statistics, frechet_distance


def generation_metrics(judge, generated, labels, real):
    """judge(images) -> (predicted class ids (N,), features (N, D)). generated: (N, C, H, W)
    images made for class ids labels (N,); real: (M, C, H, W) real images of the same classes,
    in the judge's value range. Returns {"class_accuracy", "per_class_accuracy" (class id ->
    accuracy), "feature_frechet_distance"}."""
    labels = torch.as_tensor(labels)
    if generated.ndim != 4 or real.ndim != 4 or generated.shape[1:] != real.shape[1:]:
        raise ValueError(f"generated {tuple(generated.shape)} and real {tuple(real.shape)} images must both be "
                         "(N, C, H, W) of the same size")
    if labels.shape != generated.shape[:1]:
        raise ValueError(f"need one label per generated image: {labels.numel()} labels, {generated.shape[0]} images")
    predicted, generated_features = judge(generated)
    _, real_features = judge(real)
    correct = (predicted.cpu() == labels.cpu()).float()
    per_class = {int(c): float(correct[labels == c].mean()) for c in labels.unique()}
    distance = frechet_distance(*feature_statistics(np.asarray(generated_features, dtype=np.float64)),
                                *feature_statistics(np.asarray(real_features, dtype=np.float64)))
    return {"class_accuracy": float(correct.mean()), "per_class_accuracy": per_class,
            "feature_frechet_distance": float(distance)}
