"""`vlgen fid GENERATED [REFERENCE]`: FID-50K and its companions, as a table for people or as JSON
with torch-fidelity's keys (`--json`, `--save FILE`), with the sampling settings an npz of `vlgen
sample` recorded beside it."""
import json
from pathlib import Path

from vlgen.commands.defaults import FID_BATCH
from vlgen.core.atomic import atomic_path


def evaluation_device(spec):
    """The torch device of --device: auto (a GPU when one is present), cpu, cuda or cuda:N; anything
    else, or a GPU that is not there, is an error naming the flag."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {spec}: vlgen fid runs on cpu or cuda (cuda:N); use one of those")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s); use cpu, or "
                         "a device that exists")
    return device


def sampling_record(generated):
    """What `vlgen sample` recorded beside an npz (its OUT.json), or None."""
    path = Path(generated)
    record_file = path.with_suffix(".json")
    if path.suffix != ".npz" or not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "settings" in record else None


def describe_record(record):
    settings = record["settings"]
    protocol = settings.get("protocol")
    head = f"protocol {protocol}" if protocol else "no protocol"
    details = ", ".join(f"{key} {settings[key]}" for key in ("sampler", "num_inference_steps", "guidance_scale",
                                                            "guided_channels", "dtype", "tf32", "class_labels")
                        if key in settings)
    return f"sampled with {head}: {details} (from {record['pipeline']})"


def run_fid(args):
    from vlgen.evaluation import evaluate
    from vlgen.evaluation.metrics import fidelity_keys

    device = evaluation_device(args.device)
    results = evaluate(args.generated, args.reference, args.metrics, batch_size=args.batch_size or FID_BATCH[device.type],
                       device=device, inception_weights=args.inception_weights, num_workers=args.num_workers,
                       cache_dir=args.cache_dir or "default", clip_weights=args.clip_weights,
                       kid_subset_size=args.kid_subset_size)
    record = sampling_record(args.generated)
    document = fidelity_keys(results)
    if record is not None:
        document["sampling"] = record
    if args.save is not None:
        with atomic_path(Path(args.save)) as temporary:
            temporary.write_text(json.dumps(document, indent=2))
    if args.json:
        print(json.dumps(document))
        return
    if record is not None:
        print(describe_record(record))
    count = results.get("num_images")
    for name, value in results.items():
        label = f"FID-{count / 1000:g}K" if name == "fid" and count else name
        print(f"{label:<22} {value:>14,}" if isinstance(value, int) else f"{label:<22} {value:>14.6g}")
