"""Output directories that are written whole or not at all, or resumed with the same settings."""
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from vlgen.core.atomic import atomic_path
from vlgen.core.differences import describe_differences


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


def open_resumable(out, settings, settings_file, finished_file, overwrite, command):
    """Prepare out for a long job of `command` that records its settings (a JSON-able dict) in
    out/settings_file and marks its end with out/finished_file. Returns True when out holds an
    unfinished job of the same settings, to be resumed; otherwise out is made new (an earlier
    output of this command is replaced only with overwrite) and False is returned."""
    out = Path(out)
    record = out / settings_file
    if not overwrite and record.is_file() and not (out / finished_file).is_file():
        differ = describe_differences(json.loads(record.read_text()), settings)
        if differ:
            raise ValueError(f"{out} holds an unfinished {command} with other settings ({differ}); run the same "
                             "command to resume it, or pass --overwrite to start again")
        return True
    check_output_dir(out, overwrite, marker=settings_file)  # kept unless --overwrite, and only this command's
    shutil.rmtree(out, ignore_errors=True)  # --overwrite: nothing of an earlier output is mixed in
    out.mkdir(parents=True)
    with atomic_path(record) as temporary:
        temporary.write_text(json.dumps(settings, indent=2))
    return False
