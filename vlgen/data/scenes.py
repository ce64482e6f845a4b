"""`ShapeScenes`: synthetic scenes of several non-overlapping shapes, with the labels dense tasks
need: a class-id mask per pixel (segmentation) and a box and class per shape (detection).

Shapes are those of the `shapes` dataset (its 10 classes, or a chosen subset), on backgrounds of
any colour. Scene i is drawn from its own seeded generator. Shapes, the mask and the boxes are
drawn at 4x the resolution: the image is box-filtered down (anti-aliased), the mask takes the
centre sample of each 4x4 block, and the boxes are the tight boxes of each shape's supersampled
pixels, in output pixels (x0, y0, x1, y1).
"""
import numpy as np
import torch
from PIL import Image, ImageDraw

from vlgen.data.images import pil_to_tensor
from vlgen.data.shapes import CLASS_NAMES, SUPERSAMPLING, contrasting_colour, draw_shape

BACKGROUND = 0  # mask id of the background; shape class c has mask id c + 1
PLACEMENT_TRIES = 50
SCENE_MIN_CONTRAST = 160  # backgrounds of any colour here: shapes only need to stand out from them


def _place(rng, size, count):
    """Up to count (cx, cy, r) circles that fit in the image and do not overlap."""
    placed = []
    for _ in range(PLACEMENT_TRIES):
        if len(placed) == count:
            break
        r = size * rng.uniform(0.1, 0.18)
        margin = 1.15 * r
        cx, cy = rng.uniform(margin, size - margin, 2)
        if all(np.hypot(cx - x, cy - y) > 1.2 * (r + other) for x, y, other in placed):
            placed.append((cx, cy, r))
    return placed


class ShapeScenes:
    """Items: dict(x=(3, H, W) in [-1, 1], mask=(H, W) int64 mask ids, boxes=(K, 4) float32,
    labels=(K,) int64 class ids), K between 1 and max_shapes. classes: the shape names to draw
    (class id = position in it), all ten by default; fewer make an easier task."""

    def __init__(self, resolution=64, num_samples=1000, max_shapes=3, seed=0, classes=CLASS_NAMES):
        unknown = [name for name in classes if name not in CLASS_NAMES]
        if unknown or not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct names from {CLASS_NAMES}, got {tuple(classes)}")
        self.class_names = tuple(classes)
        self.num_classes = len(self.class_names)
        if resolution < 32:
            raise ValueError(f"scene resolution must be at least 32 pixels, got {resolution}")
        if num_samples < 1 or max_shapes < 1:
            raise ValueError(f"num_samples and max_shapes must be positive, got {num_samples} and {max_shapes}")
        self.size, self.num_samples, self.max_shapes, self.seed = resolution, num_samples, max_shapes, seed

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, index])
        size = self.size * SUPERSAMPLING
        background = tuple(int(c) for c in rng.integers(0, 256, 3))
        image = Image.new("RGB", (size, size), background)
        mask = Image.new("L", (size, size), BACKGROUND)
        boxes, labels = [], []
        for cx, cy, r in _place(rng, size, int(rng.integers(1, self.max_shapes + 1))):
            label = int(rng.integers(0, self.num_classes))
            colour = contrasting_colour(rng, background, SCENE_MIN_CONTRAST)
            draw_shape(ImageDraw.Draw(image), self.class_names[label], cx, cy, r, colour, background)
            own = Image.new("L", (size, size), 0)
            draw_shape(ImageDraw.Draw(own), self.class_names[label], cx, cy, r, 1, 0)
            mask.paste(label + 1, mask=own.point(lambda v: 255 * v))
            ys, xs = np.nonzero(np.asarray(own))
            boxes.append([xs.min() / SUPERSAMPLING, ys.min() / SUPERSAMPLING,
                          (xs.max() + 1) / SUPERSAMPLING, (ys.max() + 1) / SUPERSAMPLING])
            labels.append(label)
        image = image.resize((self.size, self.size), resample=Image.BOX)
        centre = SUPERSAMPLING // 2  # the centre sample of each block
        mask = np.asarray(mask)[centre::SUPERSAMPLING, centre::SUPERSAMPLING]
        return {"x": pil_to_tensor(image), "mask": torch.from_numpy(mask.astype(np.int64)),
                "boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}
