"""Output directories that are written whole or not at all."""
import json
from contextlib import contextmanager
from pathlib import Path

from vlgen.core.atomic import atomic_path


def check_output_dir(out, overwrite=False):
    """Refuse a non-empty output directory unless overwrite (checked before long work, and again on
    write); never replace the current directory, one of its parents or the home directory."""
    out = Path(out)
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise ValueError(f"refusing to write into {out} ({resolved}): it is the current directory, one of its "
                         "parents or the home directory; choose a new directory for --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    return out


@contextmanager
def replaced_dir(out, overwrite=False):
    """Yield a hidden staging path next to out to write into; when the block succeeds, the staging
    directory replaces out atomically. A failure leaves out as it was."""
    with atomic_path(check_output_dir(out, overwrite).resolve()) as staging:
        yield staging


def save_pretrained_with_metrics(model, out, metrics, overwrite=False):
    """model.save_pretrained(out) plus metrics.json, built aside and renamed into place."""
    with replaced_dir(out, overwrite) as staging:
        model.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return Path(out)
