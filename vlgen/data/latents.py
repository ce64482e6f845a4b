"""VAE latents extracted once (`vlgen extract-latents`) and trained on.

A latent directory holds shards `shard-p<process>-<k>.safetensors` with the tensors
`moments` (n, F, 2, C, h, w): the scaled posterior mean and standard deviation of each image
(F=2: also of its mirror image), `labels` (n,) and `indices` (n,), plus `meta.json`, written
last, so a directory with meta.json is complete. Training draws x = mean + std * noise per step,
as DiT samples `vae.encode(x).latent_dist` each step; scaling is the VAE's own config:
(z - shift_factor) * scaling_factor.
"""
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vlgen.core.atomic import atomic_path
from vlgen.data.images import ImageFolderDataset
from vlgen.models.vae import latent_scaling, load_vae

META = "meta.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def extract_latents(accelerator, data_path, vae_name, out_dir, *, resolution=256, batch_size=32, flip=True,
                    dtype="float32", num_workers=0, vae_subfolder=None, skip_bad=False, shard_size=1024):
    """Encode an image folder with the VAE; process r of N encodes images r, r+N, ... and writes
    its own shards. Returns the meta dict."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    dataset = ImageFolderDataset(data_path, resolution, skip_bad=skip_bad)
    out_dir = Path(out_dir)
    if (out_dir / META).exists():
        raise FileExistsError(f"{out_dir} already holds extracted latents; choose another --out or delete it")
    out_dir.mkdir(parents=True, exist_ok=True)
    vae = load_vae(vae_name, vae_subfolder, accelerator.device)
    scale, shift = latent_scaling(vae)
    mine = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    batches = [[(i, False) for i in mine[k: k + batch_size]] for k in range(0, len(mine), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    pending, shard, latent_shape = [], 0, None

    def write_shard():
        nonlocal pending, shard
        tensors = {key: torch.cat([part[key] for part in pending]) for key in ("moments", "labels", "indices")}
        with atomic_path(out_dir / f"shard-p{accelerator.process_index:03d}-{shard:05d}.safetensors") as temporary:
            save_file(tensors, str(temporary))
        pending, shard = [], shard + 1

    done = 0
    bar = tqdm(total=len(dataset), desc="latents", disable=not accelerator.is_main_process)
    for batch_items, batch in zip(batches, loader):
        images = batch["x"].to(accelerator.device)
        views = [images, torch.flip(images, dims=[-1])] if flip else [images]
        moments = []
        for view in views:
            posterior = vae.encode(view).latent_dist
            moments.append(torch.stack([(posterior.mean - shift) * scale, posterior.std * scale], dim=1))
        moments = torch.stack(moments, dim=1)  # (n, F, 2, C, h, w)
        latent_shape = list(moments.shape[-3:])
        pending.append({"moments": moments.to(DTYPES[dtype]).cpu().contiguous(), "labels": batch["y"].long(),
                        "indices": torch.tensor([i for i, _ in batch_items])})
        done += len(batch_items)
        if sum(len(part["labels"]) for part in pending) >= shard_size:
            write_shard()
        bar.update(len(batch_items) * accelerator.num_processes)
    if pending:
        write_shard()
    bar.close()
    accelerator.wait_for_everyone()
    meta = {"count": len(dataset), "vae": str(vae_name), "vae_subfolder": vae_subfolder, "scaling_factor": scale,
            "shift_factor": shift, "resolution": resolution, "latent_shape": latent_shape, "flip": flip,
            "dtype": dtype, "class_names": dataset.class_names}
    if accelerator.is_main_process:
        if latent_shape is None:  # more processes than images: take the shape from one encoding
            image = dataset[(0, False)]["x"][None].to(accelerator.device)
            meta["latent_shape"] = list(vae.encode(image).latent_dist.mean.shape[1:])
        (out_dir / META).write_text(json.dumps(meta, indent=2))
    accelerator.wait_for_everyone()
    return meta


class LatentDataset:
    """Items: dict(x=(2, C, h, w) scaled posterior mean and std, y=class id), indexed by
    (index, flip); flip picks the latents of the mirror image (extracted with flip=True)."""

    posterior = True

    def __init__(self, root, random_flip=True):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"latent directory {root} does not exist (data.path)")
        if not (root / META).is_file():
            raise ValueError(f"{root} has no {META}: not a complete latent directory; create one with "
                             f"`vlgen extract-latents` (an interrupted extraction leaves no {META})")
        self.meta = json.loads((root / META).read_text())
        if random_flip and not self.meta["flip"]:
            raise ValueError(f"the latents in {root} were extracted without mirror images: set "
                             f"data.random_flip=false, or extract again with flips")
        self.class_names = list(self.meta["class_names"])
        self.num_classes = len(self.class_names)
        self.channels, self.size = self.meta["latent_shape"][0], self.meta["latent_shape"][1]
        self.files = sorted(root.glob("shard-p*.safetensors"))
        count = self.meta["count"]
        self.location = [None] * count  # dataset index -> (file number, row)
        labels = torch.full((count,), -1, dtype=torch.long)
        for number, path in enumerate(self.files):
            with safe_open(str(path), framework="pt") as shard:
                indices, shard_labels = shard.get_tensor("indices"), shard.get_tensor("labels")
            for row, index in enumerate(indices.tolist()):
                self.location[index] = (number, row)
            labels[indices] = shard_labels
        missing = sum(location is None for location in self.location)
        if missing:
            raise ValueError(f"{root}: {missing} of {count} images have no latents (shards missing); extract again")
        self.labels = labels
        self._handles = {}  # opened lazily, per DataLoader worker

    def __len__(self):
        return len(self.location)

    def __getitem__(self, item):
        index, flip = item
        number, row = self.location[index]
        if number not in self._handles:
            self._handles[number] = safe_open(str(self.files[number]), framework="pt")
        moments = self._handles[number].get_slice("moments")[row: row + 1][0]  # (F, 2, C, h, w)
        return {"x": moments[int(flip)].float(), "y": int(self.labels[index])}

    def __getstate__(self):  # file handles do not cross into worker processes
        return {**self.__dict__, "_handles": {}}
