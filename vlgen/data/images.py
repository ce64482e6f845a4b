"""Class-folder image datasets (ROOT/<class>/<image>) with ADM's centre crop, as DiT trains on."""
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

MAX_CONSECUTIVE_BAD = 10  # with skip_bad: how many unreadable files in a row before giving up


def pil_to_tensor(image):
    """PIL RGB -> float tensor (3, H, W) in [-1, 1], as DiT normalises images."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def center_crop_arr(image, size):
    """ADM's centre crop: halve with a box filter while the short side is at least 2x the target,
    resize the short side to `size` with bicubic, then crop the centre square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return Image.fromarray(array[top: top + size, left: left + size])


def find_images(root):
    """(class names sorted, [(path, class id)]) of ROOT/<class>/<image>, with errors that say
    what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (data.path)")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class subfolders: expected {root}/<class name>/<image file>")
    samples = make_dataset(str(root), {name: i for i, name in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                           allow_empty=True)
    if not samples:
        raise ValueError(f"image folder {root} has no images (extensions {', '.join(IMG_EXTENSIONS)}) in its "
                         f"{len(classes)} class folders")
    return classes, samples


def load_rgb(path):
    """Decode an image file to RGB; any decoding failure is an OSError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise OSError(f"cannot read image {path}: {error}") from error


class ImageFolderDataset:
    """Items: dict(x=(3, resolution, resolution) in [-1, 1], y=class id, skipped=count). Indexed
    by (index, flip). An unreadable image raises with its path, or with skip_bad the next
    readable image in the list takes its place and `skipped` counts the files passed over."""

    channels = 3
    posterior = False

    def __init__(self, root, resolution, skip_bad=False):
        self.class_names, self.samples = find_images(root)
        self.num_classes = len(self.class_names)
        self.size, self.skip_bad = resolution, skip_bad

    def __len__(self):
        return len(self.samples)

    def _load(self, index):
        """(image, label, files skipped)."""
        for skipped in range(MAX_CONSECUTIVE_BAD + 1):
            path, label = self.samples[(index + skipped) % len(self.samples)]
            try:
                return load_rgb(path), label, skipped
            except OSError as error:
                if not self.skip_bad:
                    raise OSError(f"{error} (set data.skip_bad=true to skip unreadable images)") from error
                warnings.warn(f"skipping {error}", stacklevel=2)
        raise OSError(f"{MAX_CONSECUTIVE_BAD + 1} unreadable images in a row from {self.samples[index][0]}: "
                      f"check the dataset")

    def __getitem__(self, item):
        index, flip = item
        image, label, skipped = self._load(index)
        image = center_crop_arr(image, self.size)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return {"x": pil_to_tensor(image), "y": label, "skipped": skipped}
