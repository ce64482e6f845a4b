"""`vlgen sample --pipeline DIR --num-samples 50000 --batch-size 64 --out samples.npz` (FID-50K input;
sharded under `accelerate launch -m vlgen sample ...`; `--protocol dit|visionllama|sit-sde|sit-ode|lightningdit`
sets everything a paper's evaluation set), or `vlgen sample --pipeline DIR --grid grid.png`.

Sample i has class label i % num_classes (balanced; or one drawn uniformly from (--seed, i)) and
its own seed, derived from (--seed, i).
Batch k holds samples k*B ... (k+1)*B - 1 and process r samples the batches k with k % P == r,
so the npz is the same for any number of processes. Each finished batch is written at once
to OUT.parts/ and skipped when the command is run again: an interrupted run resumes. The final
npz (ADM format: uint8 NHWC `arr_0`, labels `arr_1`; the same bytes for the same settings) replaces
the parts when all are done, with OUT.json beside it: the protocol and settings it was made with.
"""
import hashlib
import json
import math
import shutil
import signal
import warnings
import zipfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm

from vlgen.pipelines import labelled_grid, load_pipeline
from vlgen.commands.defaults import SAMPLE_DTYPES
from vlgen.commands.protocols import check_protocol_fits, describe, resolve_settings
from vlgen.core.atomic import atomic_path
from vlgen.core.differences import describe_differences
from vlgen.core.host_channel import HostChannel
from vlgen.core.ownership import owned
from vlgen.core.precision import auto_precision, set_tf32
from vlgen.core.threads import threads_line
from vlgen.core.signals import GracefulStop, Stopped, stop_agreed
from vlgen.evaluation.images import to_uint8, write_samples_npz

DTYPES = {name: getattr(torch, name) for name in SAMPLE_DTYPES if name != "auto"}


LABEL_STREAM = 1  # the random labels' stream of (seed, index), apart from the noise's


def sample_seed(seed, index):
    """The seed of sample `index`: numpy's SeedSequence mixing, so runs with nearby seeds share no noise."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sample_label(mode, seed, index, num_classes):
    """The class of sample `index`: index mod num_classes ("balanced"), or uniform from (seed, index)
    ("random", as DiT's and SiT's scripts draw them, but independent of the process count)."""
    if mode == "balanced":
        return index % num_classes
    return int(np.random.default_rng([seed, index, LABEL_STREAM]).integers(num_classes))


def sampler_options(args):
    options = {}
    for text in args.options:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {text!r} is not of the form key=value (e.g. method=heun)")
        options[key.strip()] = yaml.safe_load(raw)
    return options


def generate(pipe, labels, indices, args):
    """uint8 NHWC images of these labels, sample i seeded by sample_seed(seed, i)."""
    generators = [torch.Generator().manual_seed(sample_seed(args.seed, i)) for i in indices]
    size = args.resolution
    images = pipe(labels, guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                  generator=generators, height=size, width=size, output_type="pt",
                  guided_channels=args.guided_channels,
                  guidance_interval=None if args.guidance_interval is None else tuple(args.guidance_interval)).images
    return to_uint8(images * 2 - 1).permute(0, 2, 3, 1).cpu().numpy()


def _check_args(args):
    if (args.out is None) == (args.grid is None):
        raise ValueError("give exactly one of --out samples.npz (FID input) or --grid grid.png")
    for name in ("num_samples", "batch_size", "per_label", "num_inference_steps", "resolution", "guided_channels"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    target = Path(args.out or args.grid)
    finishing = args.out is not None and _parts_dir(target).is_dir()  # a run that died while cleaning up
    if target.exists() and not args.overwrite and not finishing:
        raise FileExistsError(f"{target} exists; choose another path or pass --overwrite to replace it")
    if args.out is not None and target.suffix != ".npz":
        raise ValueError(f"--out {target} must end in .npz (ADM format)")


def _open_pipeline(args, device):
    with warnings.catch_warnings():  # every diffusers takes torch_dtype; the newest also say dtype and warn
        warnings.filterwarnings("ignore", "`torch_dtype` is deprecated", FutureWarning)
        pipe = load_pipeline(args.pipeline, torch_dtype=DTYPES[args.dtype]).to(device)
    check_protocol_fits(args.protocol, pipe.config.process["kind"])
    if args.out is not None and pipe.vae is not None:
        pipe.vae.to(torch.float32)  # FID input: decoded in full precision, whatever the transformer runs in
    if args.sampler is not None or args.sampler_options:
        pipe.use_sampler(args.sampler, **args.sampler_options)
    pipe.set_progress_bar_config(disable=True)  # the batches have their own bar
    return pipe


def pipeline_fingerprint(directory):
    """sha256 of every file of a pipeline directory (configs and weights) by relative path: what
    its samples depend on, wherever it lies. The model card (README.md) is not among them."""
    directory, digests = Path(directory), {}
    for file in sorted(path for path in directory.rglob("*") if path.is_file() and path != directory / "README.md"):
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests[file.relative_to(directory).as_posix()] = digest.hexdigest()
    return digests


def sampling_settings(args):
    """The settings an npz's images depend on (besides the pipeline's files), as recorded beside it."""
    return {"protocol": args.protocol, "num_samples": args.num_samples, "seed": args.seed,
            "guidance_scale": args.guidance_scale, "guided_channels": args.guided_channels,
            "guidance_interval": args.guidance_interval,
            "num_inference_steps": args.num_inference_steps, "sampler": args.sampler,
            "sampler_options": args.sampler_options, "resolution": args.resolution, "dtype": args.dtype,
            "tf32": args.tf32, "class_labels": args.class_labels}


def _run_description(args):
    """What the parts of an npz run depend on: resuming with anything else is refused."""
    return {"pipeline_files": pipeline_fingerprint(args.pipeline), "batch_size": args.batch_size,
            **sampling_settings(args)}


def _changed_files(key, before, now):
    """The pipeline files whose hashes differ, worded for describe_differences."""
    if key != "pipeline_files":
        return None
    before, now = before or {}, now or {}
    changed = sorted(name for name in set(before) | set(now) if before.get(name) != now.get(name))
    return f"the pipeline's files ({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})"


def _claim_parts(parts, description, accelerator, channel, held):
    """Hold OUT.parts/ (main process) and check that its batches, if any, come from these settings;
    a run.json without batches (a run that failed before its first batch) is replaced."""
    problem = None
    if accelerator.is_main_process:
        try:
            held.enter_context(owned(parts))
        except ValueError as error:
            problem = str(error)
    run_file = parts / "run.json"
    if problem is None and run_file.is_file() and any(parts.glob("batch-*.npz")):
        differ = describe_differences(json.loads(run_file.read_text()), description, describe=_changed_files)
        if differ:
            problem = (f"{parts} holds batches of a run with other settings ({differ}); run with the same "
                       f"arguments and pipeline to resume it, or delete {parts} to start over")
    elif problem is None and accelerator.is_main_process:
        with atomic_path(run_file) as temporary:
            temporary.write_text(json.dumps(description, indent=2))
    problem = next((p for p in channel.gather(problem) if p), None)
    if problem is not None:
        raise ValueError(problem)
    channel.wait_for_main()


def _read_part(file):
    try:
        with np.load(file) as part:
            return part["images"], part["labels"]
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError, OSError):
        raise ValueError(f"{file} is damaged; delete it and run the same command again to sample that batch "
                         "again") from None


def sample_npz(args, accelerator, channel):
    """Sample args.num_samples images over the processes into args.out; returns what was written.
    SIGTERM or SIGINT stops after the current batch (raises Stopped); the same command resumes."""
    out = Path(args.out)
    parts = _parts_dir(out)
    pipe = _open_pipeline(args, accelerator.device)  # a missing or bad pipeline fails before OUT.parts/ exists
    with ExitStack() as held:
        _claim_parts(parts, _run_description(args), accelerator, channel, held)
        try:
            _sample_batches(pipe, parts, args, accelerator, channel)
        except BaseException:
            if accelerator.is_main_process and not any(parts.glob("batch-*.npz")):
                shutil.rmtree(parts, ignore_errors=True)  # nothing sampled: nothing left to block a new run
            raise
        if accelerator.is_main_process:
            files = [parts / f"batch-{k:06d}.npz" for k in range(_batch_count(args))]
            labels = np.concatenate([_read_part(f)[1] for f in files])
            image_shape = _read_part(files[0])[0].shape[1:]
            write_samples_npz(out, (_read_part(f)[0] for f in files), labels, image_shape)
            record = {"pipeline": str(Path(args.pipeline).resolve()), "settings": sampling_settings(args),
                      "processes": accelerator.num_processes}
            with atomic_path(settings_file(out)) as temporary:
                temporary.write_text(json.dumps(record, indent=2))
            shutil.rmtree(parts)
    channel.wait_for_main()  # the main process writes the npz: the others wait on the CPU side channel
    return f"{out}: {args.num_samples} images from {accelerator.num_processes} process(es)"


def settings_file(out):
    """Where an npz's protocol and settings are recorded: OUT.json beside OUT.npz."""
    return out.with_suffix(".json")


def _parts_dir(out):
    """Where the finished batches of an npz run wait: OUT.parts/ beside OUT."""
    return out.with_name(out.name + ".parts")


def _batch_count(args):
    return math.ceil(args.num_samples / args.batch_size)


def _sample_batches(pipe, parts, args, accelerator, channel):
    """This process's missing batches, each written to OUT.parts/ as soon as it is done. The
    processes go in rounds (round r: batch r * P + rank) and agree after each whether to stop."""
    num_classes, count, processes = pipe.transformer.config.num_classes, _batch_count(args), accelerator.num_processes
    mine = range(accelerator.process_index, count, processes)
    done_before = sum((parts / f"batch-{k:06d}.npz").is_file() for k in mine)
    with tqdm(total=len(mine), initial=done_before, unit="batch", desc="sampling",
              disable=not accelerator.is_main_process) as bar, GracefulStop("the current batch") as stop:
        for k in (r * processes + accelerator.process_index for r in range(math.ceil(count / processes))):
            if k < count and not (parts / f"batch-{k:06d}.npz").is_file():
                indices = range(k * args.batch_size, min((k + 1) * args.batch_size, args.num_samples))
                labels = [sample_label(args.class_labels, args.seed, i, num_classes) for i in indices]
                images = generate(pipe, labels, indices, args)
                with atomic_path(parts / f"batch-{k:06d}.npz") as temporary, temporary.open("wb") as file:
                    np.savez(file, images=images, labels=np.asarray(labels))
                bar.update()
            if stop_agreed(channel, stop):  # every process calls it once per round
                done = sum(1 for _ in parts.glob("batch-*.npz"))
                raise Stopped(f"stopped by {stop.name or 'a signal on another process'} with {done} of {count} "
                              f"batches in {parts}; run the same command to continue", stop.signum or signal.SIGTERM)
    channel.wait_for_main()


def sample_grid(args, device):
    """A labelled PNG grid, args.per_label images per label; returns what was written."""
    pipe = _open_pipeline(args, device)
    pipe.set_progress_bar_config(disable=False)  # a grid is a batch or two: show the sampler's steps
    id2label = pipe.config.id2label
    rows = args.labels or list(range(min(10, pipe.transformer.config.num_classes)))
    row_ids = pipe.get_label_ids([int(r) if str(r).isdigit() else r for r in rows])
    labels = [class_id for class_id in row_ids for _ in range(args.per_label)]
    images = []
    starts = range(0, len(labels), args.batch_size)
    for start in tqdm(starts, unit="batch", desc="sampling", disable=len(starts) == 1):
        indices = range(start, min(start + args.batch_size, len(labels)))
        images.extend(generate(pipe, [labels[i] for i in indices], indices, args))
    pil = [Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image) for image in images]
    grid = labelled_grid([(id2label.get(c, str(c)), pil[r * args.per_label:(r + 1) * args.per_label])
                          for r, c in enumerate(row_ids)])
    path = Path(args.grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return f"{path}: {len(row_ids)} labels x {args.per_label} images"


def _decided_dtype(dtype, accelerator):
    """The dtype to sample in: "auto" becomes bfloat16 where this machine runs it faster
    (vlgen.core.precision; every process of a launch decides alike)."""
    if dtype != "auto":
        return dtype
    choice, why = auto_precision(accelerator.device.type)
    decided = "bfloat16" if choice == "bf16" else "float32"
    accelerator.print(f"dtype: {decided} ({why})")
    return decided


def run_sampling(args):
    """Writes the npz or the grid; returns a line saying what was written (None on other processes)."""
    from accelerate import Accelerator

    args.sampler_options = resolve_settings(args, sampler_options(args))
    _check_args(args)
    set_tf32(args.tf32)
    accelerator = Accelerator()
    accelerator.print(threads_line())
    args.dtype = _decided_dtype(args.dtype, accelerator)
    accelerator.print(describe(args, args.sampler_options))
    if args.grid is not None:
        return sample_grid(args, accelerator.device) if accelerator.is_main_process else None
    written = sample_npz(args, accelerator, HostChannel(accelerator.num_processes))
    return written if accelerator.is_main_process else None
