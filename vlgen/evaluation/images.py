"""Image sources for evaluation, all yielding uint8 (N, 3, H, W) batches: an image folder, an
ADM-format .npz (uint8 NHWC `arr_0`) streamed from disk, or images held in memory."""
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch_fidelity.datasets import ImagesPathDataset
from torch_fidelity.utils import glob_samples_paths

from vlgen.core.atomic import atomic_path

IMAGE_EXTENSIONS = "png,jpg,jpeg,bmp,webp"
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")


def to_uint8(images):
    """Model outputs in [-1, 1] (N, C, H, W) -> uint8, exactly as samples are written to PNG and
    npz (DiT/ADM): clamp(127.5 x + 128, 0, 255), truncated."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).to(torch.uint8)


class ImageFolder:
    """Every image file under a folder (recursively, sorted), read by torch-fidelity's dataset."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder {self.path} does not exist")
        self.files = glob_samples_paths(str(self.path), True, IMAGE_EXTENSIONS, verbose=False)
        if not self.files:
            raise ValueError(f"no images ({IMAGE_EXTENSIONS}) found under {self.path}")
        self.lossy = any(Path(f).suffix.lower() in LOSSY_EXTENSIONS for f in self.files)
        self.count = len(self.files)

    @property
    def image_size(self):
        """(H, W) of the first image (a folder's images need not share one size)."""
        with Image.open(self.files[0]) as image:
            return image.height, image.width

    def batches(self, batch_size, num_workers=0):
        yield from DataLoader(ImagesPathDataset(self.files), batch_size=batch_size, num_workers=num_workers)


class NpzImages:
    """`arr_0` of an .npz, uint8 (N, H, W, 3), read batch by batch from the zip member: a 50K x
    256 x 256 set (~10 GB) is never loaded whole."""

    lossy = False

    def __init__(self, path, key="arr_0"):
        self.path, self.key = Path(path), key
        if not self.path.is_file():
            raise FileNotFoundError(f"npz file {self.path} does not exist")
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = [name.removesuffix(".npy") for name in archive.namelist()]
                if key not in names:
                    raise ValueError(f"{self.path} holds no {key} (it holds {', '.join(names) or 'nothing'}): "
                                     f"ADM-format samples keep the uint8 NHWC images in {key}")
                with archive.open(f"{key}.npy") as member:
                    self.shape, dtype, self.offset = _read_npy_header(member, self.path, key)
        except zipfile.BadZipFile:
            raise ValueError(f"{self.path} is not an npz file (a zip of .npy arrays, as np.savez or `vlgen sample` "
                             "writes)") from None
        if dtype != np.uint8:
            raise ValueError(f"{self.path}: {key} has dtype {dtype}; ADM-format samples are uint8 (clamp(127.5x+128))")
        if len(self.shape) != 4 or self.shape[-1] != 3:
            raise ValueError(f"{self.path}: {key} has shape {self.shape}; expected (N, H, W, 3) images in NHWC order")
        self.count = self.shape[0]
        self.image_size = tuple(self.shape[1:3])

    def batches(self, batch_size, num_workers=0):
        image_bytes = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as member:
            member.read(self.offset)
            for start in range(0, self.count, batch_size):
                count = min(batch_size, self.count - start)
                raw = member.read(count * image_bytes)
                batch = np.frombuffer(raw, dtype=np.uint8).reshape(count, *self.shape[1:])
                yield torch.from_numpy(batch.copy()).permute(0, 3, 1, 2)


def _read_npy_header(member, path, key):
    """(shape, dtype, header length) of an .npy stream."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    if fortran_order:
        raise ValueError(f"{path}: {key} is stored in Fortran order; save it with np.savez from a C-ordered array")
    return shape, dtype, member.tell()


class TensorImages:
    """Images in memory: a uint8 (N, 3, H, W) tensor, or an iterable of float batches in [-1, 1]
    (e.g. decoded pipeline samples), converted with `to_uint8`."""

    lossy = False

    def __init__(self, images):
        self.images = images
        self.count = images.shape[0] if torch.is_tensor(images) else None  # an iterable's length is unknown
        self.image_size = tuple(images.shape[-2:]) if torch.is_tensor(images) else None

    def batches(self, batch_size, num_workers=0):
        if torch.is_tensor(self.images):
            source = self.images.split(batch_size)
        else:
            source = self.images
        for batch in source:
            batch = batch if batch.dtype == torch.uint8 else to_uint8(batch)
            if batch.ndim != 4 or batch.shape[1] != 3:
                raise ValueError(f"images must be (N, 3, H, W), got a batch of shape {tuple(batch.shape)}")
            yield batch


def open_images(source):
    """A folder path, an .npz path, or images in memory -> an image source."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        return NpzImages(path) if path.suffix == ".npz" else ImageFolder(path)
    return TensorImages(source)


def _member(name):
    """A zip member of fixed date (zip's earliest), for byte-identical files."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def write_samples_npz(path, image_batches, labels, image_shape):
    """Write an ADM-format sample file: `arr_0` uint8 (N, H, W, C) streamed from image_batches
    (uint8 NHWC arrays, N images in all; never all in memory at once), `arr_1` the N labels.
    Written atomically (vlgen.core.atomic): path is either complete or untouched. The members carry
    a fixed date, so the same images and labels give the same bytes."""
    path = Path(path)
    labels = np.asarray(labels, dtype=np.int64)
    shape = (len(labels), *image_shape)
    with atomic_path(path) as temporary:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open(_member("arr_0.npy"), "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": shape})
                written = 0
                for batch in image_batches:
                    if batch.dtype != np.uint8 or batch.shape[1:] != tuple(image_shape):
                        raise ValueError(f"image batch {batch.dtype} {batch.shape} does not match uint8 (n, "
                                         f"{', '.join(map(str, image_shape))})")
                    member.write(np.ascontiguousarray(batch).data)
                    written += len(batch)
            if written != len(labels):
                raise ValueError(f"got {written} images for {len(labels)} labels")
            with archive.open(_member("arr_1.npy"), "w") as member:
                np.lib.format.write_array(member, labels)
