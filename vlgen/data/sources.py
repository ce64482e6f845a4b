"""Where images come from: class folders, Hugging Face datasets and WebDataset tar shards.

Every source gives (PIL RGB image, class id) by index; a streaming Hugging Face dataset gives them
in order only. `open_source(path)` recognises the form of a path (`data_format` forces one):

    folder      DATA/<class name>/<image>                      class names: the folder names
    hf          a parquet or arrow file or folder (save_to_disk or parquet shards), or a hub id
                such as ILSVRC/imagenet-1k; columns by name (image, label by default)
    webdataset  a tar shard, or a brace pattern of them (imagenet-train-{000000..001281}.tar),
                samples as KEY.jpg / KEY.png / KEY.webp with KEY.cls (the class id as text)

The Hugging Face and WebDataset readers are optional extras (pip install "vlgen[hf]" or
"vlgen[webdataset]"); without them the error names the extra.
"""
import hashlib
import importlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from tqdm.auto import tqdm

from vlgen.core.atomic import atomic_path

FORMATS = ("folder", "hf", "webdataset")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
HF_FILE_SUFFIXES = (".parquet", ".arrow")
CACHE_ENV = "VLGEN_CACHE_DIR"


def _extra(module, extra):
    """The optional package `module`, or an error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"reading this data needs the {module} package: pip install \"vlgen[{extra}]\"") from None


def decode_image(data, where):
    """Encoded image bytes, or an opened PIL image, as RGB; a failure is an OSError naming `where`."""
    try:
        if isinstance(data, Image.Image):
            return data.convert("RGB")
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise OSError(f"cannot read image {where}: {error}") from error


def detect_format(path):
    """The source format a path's form says: see the module's note."""
    text = str(path)
    if text.endswith(".tar") or ("{" in text and ".tar" in text):
        return "webdataset"
    location = Path(text)
    if location.is_file():
        if location.suffix in HF_FILE_SUFFIXES:
            return "hf"
        raise ValueError(f"{location} is a {location.suffix or 'suffix-less'} file: data is a class folder, a parquet "
                         "or arrow file or folder, a hub dataset id, or .tar shards (or force --format / data.format)")
    if location.is_dir():
        patterns = [f"{depth}*{suffix}" for depth in ("", "*/") for suffix in HF_FILE_SUFFIXES]
        hf_files = any(next(location.glob(pattern), None) is not None for pattern in patterns)
        return "hf" if hf_files or (location / "dataset_info.json").is_file() else "folder"
    if len(text.split("/")) == 2 and not text.startswith((".", "/")):
        return "hf"  # a hub id: org/name
    raise FileNotFoundError(f"data {text} does not exist: give a class folder, a parquet or arrow file or folder, a hub "
                            "dataset id (org/name) or .tar shards")


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


class FolderSource:
    """ROOT/<class>/<image>: every image file, classes sorted by name."""

    streaming = False

    def __init__(self, root):
        self.root = Path(root)
        self.class_names, self.samples = find_images(root)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with open(path, "rb") as handle:
            return decode_image(handle.read(), path), label


class HFSource:
    """A Hugging Face dataset (see the module's note): rows read by index, or in order when streaming."""

    def __init__(self, path, image_column="image", label_column="label", split="train", streaming=False):
        datasets = _extra("datasets", "hf")
        location = Path(str(path))
        self.name, self.streaming = str(path), streaming
        if location.is_dir() and ((location / "dataset_info.json").is_file() or (location / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(location))
            data = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
            data = data.to_iterable_dataset() if streaming else data
        elif location.exists():
            files = [str(location)] if location.is_file() else sorted(
                str(file) for suffix in HF_FILE_SUFFIXES for file in location.rglob(f"*{suffix}"))
            builder = "parquet" if files and files[0].endswith(".parquet") else "arrow"
            data = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=streaming)
        else:
            data = datasets.load_dataset(str(path), split=split, streaming=streaming)
        missing = [column for column in (image_column, label_column) if column not in (data.column_names or [])]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r} (columns: {', '.join(data.column_names or [])}); "
                             "name the image and label columns (--image-column / --label-column, data.image_column / "
                             "data.label_column)")
        self.data, self.image_column, self.label_column = data, image_column, label_column
        feature = data.features[label_column] if data.features is not None else None
        if isinstance(feature, datasets.ClassLabel):
            self.class_names = list(feature.names)
        elif streaming:
            raise ValueError(f"{path}: the label column {label_column!r} is not a ClassLabel, so a stream does not say "
                             "how many classes there are; cast it to ClassLabel or read the dataset without streaming")
        else:
            self.class_names = [str(i) for i in range(int(max(data[label_column])) + 1)]

    def __len__(self):
        if self.streaming:
            raise TypeError("a streaming dataset has no length")
        return len(self.data)

    def decode_row(self, row, index):
        """(image, class id) of a row of the dataset (a streamed one's rows come from self.data)."""
        value = row[self.image_column]
        image = value["bytes"] if isinstance(value, dict) else value
        return decode_image(image, f"row {index} of {self.name}"), int(row[self.label_column])

    def __getitem__(self, index):
        return self.decode_row(self.data[index], index)


def expand_shards(pattern):
    """The tar files of a brace pattern (or a single path), each checked to exist."""
    braceexpand = _extra("braceexpand", "webdataset")
    files = [Path(name) for name in braceexpand.braceexpand(str(pattern))]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} tar shards of {pattern} do not exist (first: "
                                f"{missing[0]})")
    return files


def _tar_index(files):
    """(shard, data offset, size, class id) of every image sample of the tar files, in order;
    WebDataset's grouping: a sample is the members that share a key (the name before its first dot)."""
    shard, offset, size, label = [], [], [], []
    for number, file in enumerate(tqdm(files, desc="indexing tar shards", unit="shard", leave=False,
                                       disable=len(files) < 8)):
        images, classes = {}, {}
        with tarfile.open(file) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                key, _, extension = base.partition(".")
                key = f"{directory}/{key}" if directory else key
                if f".{extension.lower()}" in IMAGE_SUFFIXES:
                    images[key] = (member.offset_data, member.size)
                elif extension == "cls":
                    classes[key] = int(archive.extractfile(member).read().decode().strip())
        for key, (data_offset, data_size) in images.items():
            if key not in classes:
                raise ValueError(f"{file}: sample {key} has an image but no {key}.cls (its class id)")
            shard.append(number)
            offset.append(data_offset)
            size.append(data_size)
            label.append(classes[key])
    if not shard:
        raise ValueError(f"the tar shards ({files[0]} ...) hold no images ({', '.join(IMAGE_SUFFIXES)}) with .cls labels")
    return {"shard": np.asarray(shard, np.int32), "offset": np.asarray(offset, np.int64),
            "size": np.asarray(size, np.int64), "label": np.asarray(label, np.int64)}


class TarSource:
    """WebDataset tar shards read by index: one pass over the shards' headers builds an index (kept in
    the cache directory, keyed by the files' paths, sizes and times), then each image is one read."""

    streaming = False

    def __init__(self, pattern, cache_dir=None):
        self.files = expand_shards(pattern)
        digest = hashlib.sha256()
        for file in self.files:
            stat = file.stat()
            digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        root = Path(cache_dir or Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "vlgen")) / "tar-index")
        cached = root / f"{digest.hexdigest()[:32]}.npz"
        if cached.is_file():
            with np.load(cached) as data:
                self.index = {name: data[name] for name in data.files}
        else:
            self.index = _tar_index(self.files)
            try:
                with atomic_path(cached) as temporary, temporary.open("wb") as handle:
                    np.savez(handle, **self.index)
            except OSError:
                pass  # a read-only cache: index again next time
        self.class_names = [str(i) for i in range(int(self.index["label"].max()) + 1)]
        self._handles = {}

    def __len__(self):
        return len(self.index["label"])

    def __getitem__(self, index):
        number = int(self.index["shard"][index])
        if number not in self._handles:
            self._handles[number] = open(self.files[number], "rb")
        handle = self._handles[number]
        handle.seek(int(self.index["offset"][index]))
        data = handle.read(int(self.index["size"][index]))
        return decode_image(data, f"sample {index} of {self.files[number]}"), int(self.index["label"][index])

    def __getstate__(self):  # file handles do not cross into DataLoader workers
        return {**self.__dict__, "_handles": {}}


def open_source(path, data_format=None, image_column="image", label_column="label", split="train", streaming=False):
    """The image source at path (module's note); data_format forces folder, hf or webdataset."""
    data_format = data_format or detect_format(path)
    if data_format not in FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; choose one of {FORMATS}")
    if streaming and data_format != "hf":
        raise ValueError("streaming reads Hugging Face datasets; folders and tar shards are read by index already")
    if data_format == "folder":
        return FolderSource(path)
    if data_format == "webdataset":
        return TarSource(path)
    return HFSource(path, image_column, label_column, split, streaming)
