"""Output directories that are written whole or not at all."""
import json
import shutil
from contextlib import contextmanager
from pathlib import Path


def check_output_dir(out, overwrite=False):
    """Refuse a non-empty output directory unless overwrite (checked before long work, and again on write)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    return out


@contextmanager
def replaced_dir(out, overwrite=False):
    """Yield a hidden staging path next to out to write into; when the block succeeds, the staging
    directory replaces out. A failure leaves out as it was."""
    out = check_output_dir(out, overwrite)
    staging = out.parent / f".{out.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier failure
    yield staging
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def save_pretrained_with_metrics(model, out, metrics, overwrite=False):
    """model.save_pretrained(out) plus metrics.json, built aside and renamed into place."""
    with replaced_dir(out, overwrite) as staging:
        model.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return Path(out)
