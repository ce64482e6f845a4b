"""VAE latents extracted once (`vlgen extract-latents`) and trained on.

    OUT/extraction.json               the settings (a resumed extraction must have the same)
    OUT/shard-000000.safetensors ...  images k*S ... (k+1)*S - 1 of the source (S: --shard-size)
    OUT/meta.json                     written last: a directory with meta.json is complete

A shard holds `moments` (n, 2, C, h, w): the scaled posterior mean and standard deviation of each
image, `moments_flip` the same of its mirror image (when extracted with flips), `labels`,
`indices` (source positions) and the per-channel sums of its means; extracted with an encoder
(`--encoder`, for representation alignment: vlgen.training.repa), `features` (n, D, h', w') its
patch features of each image and `features_flip` of its mirror image. Shards are numbered by source
position, so they are the same whatever the number of processes (process r writes shards k with
k mod P = r), each is written atomically, and an interrupted extraction run again keeps the shards
it has and writes the others. Training draws x = mean + std * noise per step, as DiT samples
`vae.encode(x).latent_dist` each step; scaling is the VAE's own config, (z - shift_factor) *
scaling_factor, and optionally per channel (data.latent_norm: channel, LightningDiT's): minus the
channel's mean over the dataset, divided by its standard deviation, both kept in meta.json.
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vlgen.core.atomic import atomic_path
from vlgen.core.host_channel import HostChannel
from vlgen.core.output_dir import open_resumable
from vlgen.data.images import center_crop_arr, pil_to_tensor
from vlgen.data.sources import open_source
from vlgen.models.vae import latent_scaling, load_vae

META, SETTINGS = "meta.json", "extraction.json"
FORMAT = 2  # the layout above; directories of other layouts are extracted again
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LATENT_NORMS = ("vae", "channel")


def shard_path(out_dir, number):
    return Path(out_dir) / f"shard-{number:06d}.safetensors"


class _Crops:
    """The source's images centre-cropped, by position; unreadable ones come back marked, not raised,
    when skip_bad (the extraction counts and leaves them out)."""

    def __init__(self, source, resolution, skip_bad):
        self.source, self.resolution, self.skip_bad = source, resolution, skip_bad

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        try:
            image, label = self.source[index]
        except OSError:
            if not self.skip_bad:
                raise
            return {"x": torch.zeros(3, self.resolution, self.resolution), "y": -1, "index": index, "ok": False}
        return {"x": pil_to_tensor(center_crop_arr(image, self.resolution)), "y": label, "index": index, "ok": True}


def _encode(vae, encoder, images, flip, scale, shift):
    """A batch's tensors: moments (n, 2, C, h, w), with flip moments_flip of the mirror images, with
    an encoder its features (and features_flip)."""
    views = {"": images, "_flip": torch.flip(images, dims=[-1])} if flip else {"": images}
    encoded = {}
    for suffix, view in views.items():
        posterior = vae.encode(view).latent_dist
        encoded["moments" + suffix] = torch.stack([(posterior.mean - shift) * scale, posterior.std * scale], dim=1)
        if encoder is not None:
            encoded["features" + suffix] = encoder(view).float()
    return {key: value.cpu() for key, value in encoded.items()}


def _write_shard(path, parts, skipped, dtype):
    """parts: each batch's tensors (_encode's, labels and indices); an empty shard (all skipped)
    holds only the empty labels and indices and the count skipped."""
    tensors = {key: torch.cat([part[key] for part in parts]) for key in (parts[0] if parts else ())}
    for key in ("labels", "indices"):
        tensors[key] = tensors.get(key, torch.zeros(0)).long()
    for key in set(tensors) - {"labels", "indices"}:
        tensors[key] = tensors[key].to(DTYPES[dtype]).contiguous()
    if parts:
        means = torch.cat([part["moments"][:, 0] for part in parts]).double()  # before the storage dtype
        tensors.update(channel_sum=means.sum(dim=(0, 2, 3)), channel_sumsq=means.square().sum(dim=(0, 2, 3)))
    tensors["skipped"] = torch.tensor([skipped])
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))


@torch.no_grad()
def extract_latents(accelerator, data, vae_name, out_dir, *, resolution=256, batch_size=32, flip=True,
                    dtype="float32", num_workers=0, vae_subfolder=None, skip_bad=False, shard_size=1024,
                    data_format=None, source_options=None, encoder=None, progress=True, channel=None):
    """Encode every image of a source with the VAE (and an encoder) into latent shards.

    Shards are spread over the processes; run again after an interruption, it keeps the shards
    written and writes the rest.

    Args:
        accelerator: an accelerate Accelerator (its processes share the shards).
        data: an image source (vlgen.data.sources): class folder, Hugging Face dataset, tar shards.
        vae_name: a VAE hub id or directory (e.g. "stabilityai/sd-vae-ft-ema").
        out_dir: the output directory (shards, meta.json).
        resolution: image side after ADM's centre crop.
        batch_size: images per VAE call.
        flip: also store the latents of each mirror image.
        dtype: storage dtype of the latents: "float32", "bfloat16" or "float16".
        num_workers: image-decoding processes.
        vae_subfolder: the VAE's subfolder in a pipeline repository.
        skip_bad: skip unreadable images (counted) instead of raising.
        shard_size: images per shard file.
        data_format: force the source's form instead of detecting it.
        source_options: image_column, label_column, split, streaming of a Hugging Face dataset.
        encoder: a frozen encoder (`vlgen.tasks.encoders.load_encoder`) whose patch features are
            stored too, for REPA.
        progress: show a progress bar.
        channel: the host channel of the processes (default: a new one).

    Returns:
        dict: the meta.json contents (count, skipped, latent shape, per-channel statistics, ...).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be positive integers")
    channel = channel or HostChannel(accelerator.num_processes)
    source_options = dict(source_options or {})
    source = open_source(data, data_format, **source_options)
    out_dir = Path(out_dir)
    settings = {"format": FORMAT, "data": str(data), "data_format": data_format, "source_options": source_options,
                "vae": str(vae_name), "vae_subfolder": vae_subfolder, "resolution": resolution, "flip": flip,
                "dtype": dtype, "shard_size": shard_size, "skip_bad": skip_bad,
                "encoder": None if encoder is None else encoder.spec}
    problem = None
    if accelerator.is_main_process:
        try:
            open_resumable(out_dir, settings, SETTINGS, META, False, "extraction of latents")
        except (OSError, ValueError) as error:
            problem = str(error) if not (out_dir / META).is_file() else \
                f"{out_dir} already holds extracted latents; choose another --out or delete it"
    problem = channel.broadcast(problem)
    if problem is not None:
        raise (FileExistsError if "already holds" in problem else ValueError)(problem)
    vae = load_vae(vae_name, vae_subfolder, accelerator.device)
    scale, shift = latent_scaling(vae)
    rank, processes = accelerator.process_index, accelerator.num_processes
    encode = _Encoder(vae, encoder, flip, scale, shift, dtype, accelerator.device)
    if source.streaming:
        _extract_stream(source, resolution, skip_bad, shard_size, batch_size, out_dir, encode, rank, processes,
                        progress and accelerator.is_main_process)
    else:
        crops = _Crops(source, resolution, skip_bad)
        shards = [k for k in range(math.ceil(len(source) / shard_size))
                  if k % processes == rank and not shard_path(out_dir, k).is_file()]
        total = sum(min(shard_size, len(source) - k * shard_size) for k in shards)
        with tqdm(total=total, unit="img", desc=f"latents (process {rank} of {processes})",
                  disable=not (progress and accelerator.is_main_process)) as bar:
            for k in shards:
                indices = list(range(k * shard_size, min((k + 1) * shard_size, len(source))))
                loader = torch.utils.data.DataLoader(torch.utils.data.Subset(crops, indices), batch_size=batch_size,
                                                     num_workers=num_workers)
                encode.shard(shard_path(out_dir, k), loader, bar)
    channel.wait_for_main()
    meta = None
    if accelerator.is_main_process:
        meta = _finish(out_dir, settings, source.class_names, scale, shift,
                       None if encoder is None else {"spec": encoder.spec, "dim": encoder.dim})
    channel.wait_for_main()
    return meta if meta is not None else json.loads((out_dir / META).read_text())


class _Encoder:
    """Encodes a shard's batches and writes the shard."""

    def __init__(self, vae, encoder, flip, scale, shift, dtype, device):
        self.vae, self.encoder, self.flip, self.scale, self.shift = vae, encoder, flip, scale, shift
        self.dtype, self.device = dtype, device

    def shard(self, path, batches, bar):
        parts, skipped = [], 0
        for batch in batches:
            keep = batch["ok"]
            skipped += int((~keep).sum())
            if keep.any():
                part = _encode(self.vae, self.encoder, batch["x"][keep].to(self.device), self.flip, self.scale,
                               self.shift)
                parts.append({**part, "labels": batch["y"][keep], "indices": batch["index"][keep]})
            bar.update(len(keep))
        _write_shard(path, parts, skipped, self.dtype)


def _extract_stream(source, resolution, skip_bad, shard_size, batch_size, out_dir, encode, rank, processes, progress):
    """A streamed source read in order: every process reads the stream and decodes and encodes only
    the images of its own shards."""
    blank = torch.zeros(3, resolution, resolution)
    with tqdm(unit="img", desc=f"latents (process {rank} of {processes}, streamed)", disable=not progress) as bar:

        def write(number, items):
            batches = [torch.utils.data.default_collate(items[i: i + batch_size])
                       for i in range(0, len(items), batch_size)]
            encode.shard(shard_path(out_dir, number), batches, bar)

        items, current = [], None
        for index, row in enumerate(source.data):
            number = index // shard_size
            if number != current and items:
                write(current, items)
                items = []
            current = number
            if number % processes != rank or shard_path(out_dir, number).is_file():
                continue
            try:
                image, label = source.decode_row(row, index)
            except OSError:
                if not skip_bad:
                    raise
                items.append({"x": blank, "y": -1, "index": index, "ok": False})
                continue
            items.append({"x": pil_to_tensor(center_crop_arr(image, resolution)), "y": label, "index": index,
                          "ok": True})
        if items:
            write(current, items)


def _finish(out_dir, settings, class_names, scale, shift, encoder):
    """meta.json from the shards: counts, labels' classes, per-channel statistics, shapes."""
    files = sorted(out_dir.glob("shard-*.safetensors"))
    count, skipped, sums, squares, latent_shape = 0, 0, 0.0, 0.0, None
    for file in files:
        with safe_open(str(file), framework="pt") as shard:
            skipped += int(shard.get_tensor("skipped")[0])
            if "moments" not in shard.keys():  # every image of the shard skipped
                continue
            count += shard.get_slice("labels").get_shape()[0]
            sums = sums + shard.get_tensor("channel_sum")
            squares = squares + shard.get_tensor("channel_sumsq")
            latent_shape = shard.get_slice("moments").get_shape()[2:]
    if count == 0:
        raise ValueError(f"no image of {settings['data']} could be read; check the data")
    positions = count * latent_shape[1] * latent_shape[2]
    mean = sums / positions
    std = (squares / positions - mean.square()).clamp_min(0).sqrt()
    meta = {**{k: settings[k] for k in ("format", "vae", "vae_subfolder", "resolution", "flip", "dtype",
                                        "shard_size")},
            "count": count, "skipped": skipped, "scaling_factor": scale, "shift_factor": shift,
            "latent_shape": list(latent_shape), "class_names": list(class_names), "channel_mean": mean.tolist(),
            "channel_std": std.tolist(), "source": settings["data"], "encoder": encoder}
    with atomic_path(out_dir / META) as temporary:
        temporary.write_text(json.dumps(meta, indent=2))
    return meta


class LatentDataset:
    """Latents written by `extract_latents`, indexed by (index, flip).

    Items are dicts: x (2, C, h, w) the scaled posterior mean and std, y the class id, and z
    (D, h', w') the encoder's features when extracted with one. flip picks the latents of the
    mirror image (extracted with flip=True); only that variant is read. The index is numpy arrays:
    flat memory in every loader worker.

    Args:
        root: the directory extract_latents wrote.
        random_flip: sample the mirror variant half of the time (needs latents extracted with flip).
        latent_norm: "vae" (the VAE's scaling only) or "channel" (each channel normalised by the
            dataset's mean and standard deviation from meta.json).
    """

    posterior = True

    def __init__(self, root, random_flip=True, latent_norm="vae"):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"latent directory {root} does not exist (data.path)")
        if not (root / META).is_file():
            raise ValueError(f"{root} has no {META}: not a complete latent directory; create one with "
                             f"`vlgen extract-latents` (run it again to finish an interrupted one)")
        self.meta = json.loads((root / META).read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{root} was extracted by an earlier vlgen in another layout: extract it again with "
                             "`vlgen extract-latents`")
        if latent_norm not in LATENT_NORMS:
            raise ValueError(f"unknown data.latent_norm {latent_norm!r}; choose one of {LATENT_NORMS}")
        if random_flip and not self.meta["flip"]:
            raise ValueError(f"the latents in {root} were extracted without mirror images: set "
                             f"data.random_flip=false, or extract again with flips")
        self.encoder = self.meta.get("encoder")  # {spec, dim} when extracted with --encoder
        self.class_names = list(self.meta["class_names"])
        self.num_classes = len(self.class_names)
        self.channels, self.size = self.meta["latent_shape"][0], self.meta["latent_shape"][1]
        self.norm = None
        if latent_norm == "channel":
            mean, std = (torch.tensor(self.meta[key], dtype=torch.float32)[:, None, None]
                         for key in ("channel_mean", "channel_std"))
            self.norm = (mean, std)
        self.files = sorted(root.glob("shard-*.safetensors"))
        count = self.meta["count"]
        positions = []
        for number, path in enumerate(self.files):
            with safe_open(str(path), framework="pt") as shard:
                indices, labels = shard.get_tensor("indices").numpy(), shard.get_tensor("labels").numpy()
            positions.append(np.stack([indices, np.full_like(indices, number), np.arange(len(indices)), labels], 1))
        table = np.concatenate(positions) if positions else np.zeros((0, 4), np.int64)
        if len(table) != count:
            raise ValueError(f"{root}: {count - len(table)} of {count} images have no latents (shards missing); "
                             "extract again")
        table = table[np.argsort(table[:, 0], kind="stable")]  # dataset index i: the i-th extracted image
        self.file_of, self.row_of = table[:, 1].astype(np.int32), table[:, 2].astype(np.int32)
        self.labels = table[:, 3].astype(np.int64)
        self._handles = {}  # opened lazily, per DataLoader worker

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        index, flip = item
        number, row = int(self.file_of[index]), int(self.row_of[index])
        if number not in self._handles:
            self._handles[number] = safe_open(str(self.files[number]), framework="pt")
        shard, suffix = self._handles[number], "_flip" if flip else ""
        moments = shard.get_slice("moments" + suffix)[row: row + 1][0].float()
        if self.norm is not None:
            mean, std = self.norm
            moments = torch.stack([(moments[0] - mean) / std, moments[1] / std])
        item = {"x": moments, "y": int(self.labels[index])}
        if self.encoder is not None:
            item["z"] = shard.get_slice("features" + suffix)[row: row + 1][0].float()
        return item

    def __getstate__(self):  # file handles do not cross into worker processes
        return {**self.__dict__, "_handles": {}}
