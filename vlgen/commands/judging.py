"""The judge of generated images that `vlgen demo` and `vlgen compare` share.

A small VisionLLaMA classifier learns real images; it then scores images a pipeline draws class by
class: the share it assigns to their conditioning class, and the Frechet distance between its
features of generated and of real images (FID's formula in the judge's feature space, not FID).
"""
import json
from functools import partial

import torch

from vlgen.core.output_dir import save_pretrained_with_metrics
from vlgen.evaluation.generation_metrics import generation_metrics
from vlgen.tasks.classification import VisionLLaMAClassifier, accuracy, classify, create_classifier, train_classifier

JUDGE_TOKENS_PER_SIDE = 4  # classifier patch = resolution / 4
JUDGE_WIDTH = dict(hidden_size=128, depth=4, num_heads=4)
JUDGE_BATCH_SIZE, JUDGE_LR = 64, 1e-3
DATA_WORKERS = 2  # shapes are drawn on the fly: rendering in worker processes keeps the judge's steps busy
REAL_IMAGES_SEED = 1_000_003  # held-out shapes: neither a denoiser's nor the judge's training set
METRICS_FILE = "metrics.json"  # next to the judge's weights: its held-out accuracy


def train_judge(training_set, held_out, resolution, steps, seed, out, accelerator):
    """A classifier trained on the real images of training_set, saved to out with its accuracy on
    held_out (a dataset of real images, or None); returns (judge, that accuracy or None)."""
    torch.manual_seed(seed)  # its initial weights: the same in every process, whatever ran before
    judge = create_classifier("S", training_set.num_classes, image_size=resolution,
                              patch_size=resolution // JUDGE_TOKENS_PER_SIDE, layer_scale_init=0.1, **JUDGE_WIDTH)
    train_classifier(judge, training_set, steps=steps, batch_size=JUDGE_BATCH_SIZE, lr=JUDGE_LR, seed=seed,
                     num_workers=DATA_WORKERS, accelerator=accelerator)
    judge = accelerator.unwrap_model(judge)
    held_out_accuracy = accuracy(judge, held_out, num_workers=DATA_WORKERS) if held_out is not None else None
    save_pretrained_with_metrics(judge, out, {"held_out_accuracy": held_out_accuracy})
    return judge, held_out_accuracy


def load_judge(directory):
    """(judge, held-out accuracy) saved by train_judge in directory; None when there is none."""
    if not (directory / METRICS_FILE).is_file():
        return None
    judge = VisionLLaMAClassifier.from_pretrained(directory)
    return judge, json.loads((directory / METRICS_FILE).read_text())["held_out_accuracy"]


def real_images(dataset, count):
    """count real images (count, C, H, W) in [-1, 1], evenly spaced over dataset (whose image
    folders list their classes in turn), not mirrored."""
    if count > len(dataset):
        raise ValueError(f"need {count} real images to score against, the dataset has {len(dataset)}: lower "
                         "--samples-per-class or add images")
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist() if count > 1 else [0]
    return torch.stack([dataset[(i, False)]["x"] for i in indices])


def sample_classes(pipe, sampler, num_classes, per_class, guidance_scale, seed, resolution=None):
    """per_class images of every class by the given sampler (its name under "sampler", and its
    options), (N, C, H, W) in [-1, 1] (H = W = resolution; None: the trained size), and their
    labels (N,)."""
    options = dict(sampler)
    pipe.use_sampler(options.pop("sampler"), **options)
    labels = torch.arange(num_classes).repeat(per_class)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    images = pipe(labels.tolist(), guidance_scale=guidance_scale, generator=generator, output_type="pt",
                  height=resolution, width=resolution).images
    return images.float().cpu() * 2 - 1, labels


def judge_scores(judge, generated, labels, real):
    """vlgen.evaluation.generation_metrics with the judge's classes and features."""
    return generation_metrics(partial(classify, judge), generated, labels, real)
