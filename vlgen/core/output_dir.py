"""Output directories that are written whole or not at all."""
import json
from contextlib import contextmanager
from pathlib import Path

from vlgen.core.atomic import atomic_path


def check_output_dir(out, overwrite=False, marker=None):
    """Refuse a non-empty output directory unless overwrite (checked before long work, and again on
    write); never replace the current directory, one of its parents or the home directory, nor,
    when the command names the file that marks its outputs (`marker`), a directory without it."""
    out = Path(out)
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise ValueError(f"refusing to write into {out} ({resolved}): it is the current directory, one of its "
                         "parents or the home directory; choose a new directory for --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        if marker is not None and not (out / marker).is_file():
            raise ValueError(f"{out} is not an earlier output of this command (it has no {marker}), and --overwrite "
                             "replaces only those: choose another --out")
    return out


@contextmanager
def replaced_dir(out, overwrite=False, marker=None):
    """Yield a hidden staging path next to out to write into; when the block succeeds, the staging
    directory replaces out atomically. A failure leaves out as it was."""
    with atomic_path(check_output_dir(out, overwrite, marker).resolve()) as staging:
        yield staging


def save_pretrained_with_metrics(model, out, metrics, overwrite=False):
    """model.save_pretrained(out) plus metrics.json, built aside and renamed into place; --overwrite
    replaces only such a directory."""
    with replaced_dir(out, overwrite, marker="metrics.json") as staging:
        model.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return Path(out)
