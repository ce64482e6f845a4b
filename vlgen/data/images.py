"""Image datasets for training (any source of vlgen.data.sources) with ADM's centre crop, as DiT trains on."""
import warnings

import numpy as np
import torch
from PIL import Image

from vlgen.data.sources import open_source

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


class ImageDataset:
    """Images of any source that gives them by index, centre-cropped as ADM, indexed by (index, flip).

    Items are dicts: x (3, resolution, resolution) in [-1, 1], y the class id, skipped the count
    of unreadable images passed over. An unreadable image raises with where it is, or with
    skip_bad the next readable image takes its place.

    Args:
        path: a class folder, a Hugging Face dataset (directory or hub id) or WebDataset tar
            shards (vlgen.data.sources).
        resolution: side of the square crop in pixels.
        skip_bad: replace unreadable images instead of raising.
        data_format: force the form of path ("folder", "hf", "webdataset") instead of detecting it.
        **source_options: image_column, label_column and split of a Hugging Face dataset.
    """

    channels = 3
    posterior = False

    def __init__(self, path, resolution, skip_bad=False, data_format=None, **source_options):
        self.source = open_source(path, data_format, **source_options)
        if self.source.streaming:
            raise ValueError(f"{path} is streamed, which gives images in order only: extract latents from it "
                             "(`vlgen extract-latents --streaming`) and train on those, or read it without streaming")
        self.class_names = self.source.class_names
        self.num_classes = len(self.class_names)
        self.size, self.skip_bad = resolution, skip_bad

    def __len__(self):
        return len(self.source)

    def _load(self, index):
        """(image, label, images skipped)."""
        for skipped in range(MAX_CONSECUTIVE_BAD + 1):
            try:
                image, label = self.source[(index + skipped) % len(self.source)]
                return image, label, skipped
            except OSError as error:
                if not self.skip_bad:
                    raise OSError(f"{error} (set data.skip_bad=true to skip unreadable images)") from error
                warnings.warn(f"skipping {error}", stacklevel=2)
        raise OSError(f"{MAX_CONSECUTIVE_BAD + 1} unreadable images in a row from image {index}: check the dataset")

    def __getitem__(self, item):
        index, flip = item
        image, label, skipped = self._load(index)
        image = center_crop_arr(image, self.size)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return {"x": pil_to_tensor(image), "y": label, "skipped": skipped}
