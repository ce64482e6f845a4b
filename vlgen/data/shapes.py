"""`shapes`: a procedural dataset of coloured geometric shapes, 10 classes, any resolution.

Sample i is drawn from its own seeded generator, so it is the same on every machine and in every
process, and nothing is downloaded. The class is i mod 10; colours, size and position vary. Shapes
are drawn at 4x the resolution and downsampled, so edges are anti-aliased at any size.

Backgrounds are dark (every channel below 64) and shapes contrast with them: with backgrounds of
any colour, a small generator spends its first thousands of steps on the background colour
(README, Data).
"""
import math

import numpy as np
from PIL import Image, ImageDraw

from vlgen.data.images import pil_to_tensor

CLASS_NAMES = ("circle", "square", "triangle", "diamond", "star", "plus", "ring", "cross", "bar", "half-disc")
SUPERSAMPLING = 4
BACKGROUND_LEVEL_LIMIT = 64  # background channels are drawn from [0, 64)
MIN_CONTRAST = 240  # sum over channels of |shape colour - background colour|


def _regular_polygon(cx, cy, radius, corners, rotation=-math.pi / 2):
    return [(cx + radius * math.cos(rotation + 2 * math.pi * k / corners),
             cy + radius * math.sin(rotation + 2 * math.pi * k / corners)) for k in range(corners)]


def _star(cx, cy, radius):
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.42
        angle = -math.pi / 2 + math.pi * k / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def draw_shape(draw, name, cx, cy, r, colour, background):
    """Draw one shape of half-size r centred at (cx, cy)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    arm = r * 0.3  # half-width of the plus / cross arms and of the bar
    if name == "circle":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.rectangle((cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r), fill=colour)
    elif name == "triangle":
        draw.polygon(_regular_polygon(cx, cy + 0.2 * r, 1.1 * r, 3), fill=colour)
    elif name == "diamond":
        draw.polygon(_regular_polygon(cx, cy, r, 4), fill=colour)
    elif name == "star":
        draw.polygon(_star(cx, cy, 1.1 * r), fill=colour)
    elif name == "plus":
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=colour)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=colour)
    elif name == "ring":
        draw.ellipse(box, fill=colour)
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=background)
    elif name == "cross":
        d = arm / math.sqrt(2)
        for sign in (1, -1):  # two bars along the diagonals
            draw.polygon([(cx - r * 0.8 - d, cy - sign * (r * 0.8 - d)), (cx - r * 0.8 + d, cy - sign * (r * 0.8 + d)),
                          (cx + r * 0.8 + d, cy + sign * (r * 0.8 - d)), (cx + r * 0.8 - d, cy + sign * (r * 0.8 + d))],
                         fill=colour)
    elif name == "bar":
        draw.rectangle((cx - r, cy - 0.35 * r, cx + r, cy + 0.35 * r), fill=colour)
    elif name == "half-disc":
        draw.pieslice((cx - r, cy - 0.5 * r, cx + r, cy + 1.5 * r), 180, 360, fill=colour)
    else:
        raise ValueError(f"unknown shape {name!r}; choose one of {CLASS_NAMES}")


def contrasting_colour(rng, background, min_contrast):
    """A random RGB colour at least min_contrast away from background (sum of channel differences)."""
    while True:
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - np.asarray(background)).sum() >= min_contrast:
            return tuple(int(c) for c in colour)


def _colours(rng):
    """A dark background colour and a shape colour that contrasts with it."""
    background = tuple(int(c) for c in rng.integers(0, BACKGROUND_LEVEL_LIMIT, 3))
    return background, contrasting_colour(rng, background, MIN_CONTRAST)


def render_shape(label, resolution, rng):
    """A PIL RGB image of class `label` with colours, size and position drawn from rng."""
    size = resolution * SUPERSAMPLING
    background, colour = _colours(rng)
    r = size * rng.uniform(0.22, 0.36)
    margin = 1.15 * r
    cx, cy = rng.uniform(margin, size - margin, 2)
    image = Image.new("RGB", (size, size), background)
    draw_shape(ImageDraw.Draw(image), CLASS_NAMES[label], cx, cy, r, colour, background)
    return image.resize((resolution, resolution), resample=Image.BOX)


class ShapesDataset:
    """Items: dict(x=(3, resolution, resolution) in [-1, 1], y=class id). Indexed by
    (index, flip) pairs: flip mirrors the image horizontally."""

    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)
    channels = 3
    posterior = False

    def __init__(self, resolution=32, num_samples=10000, seed=0):
        if resolution < 8:
            raise ValueError(f"shapes resolution must be at least 8 pixels, got {resolution}")
        if num_samples < 1:
            raise ValueError(f"shapes num_samples must be positive, got {num_samples}")
        self.size = resolution
        self.num_samples, self.seed = num_samples, seed

    def __len__(self):
        return self.num_samples

    def image(self, index):
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, index])
        return render_shape(label, self.size, rng), label

    def __getitem__(self, item):
        index, flip = item
        image, label = self.image(index)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return {"x": pil_to_tensor(image), "y": label}
