"""Atomic writes: a file or a directory is written under a temporary name beside its target and
renamed into place.

The one crash guarantee of every writer in vlgen: at any moment the target is its previous
complete version or its new complete version (a directory that replaces another is absent for
the instant between two renames, never partial); an error inside the block removes the temporary
and leaves the target as it was; a crash leaves at most a hidden `.NAME.<pid>-<random>.tmp`
beside the target, which no reader takes for it. Temporary names are unique per call, so
concurrent writers never share one, and the new content is on disk (fsync) before the rename.
"""
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path


def temporary_name(target):
    """A hidden name beside target, unique to this call."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(target):
    """Yield a temporary path beside target to write a file or a directory at; when the block
    returns, it replaces target (see the module's guarantee)."""
    target = Path(target)
    if target.name in ("", ".", ".."):
        raise ValueError(f"cannot write {target!s} atomically: name a file or directory, not {target!s}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(target)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"nothing was written for {target}")
        for file in [temporary] if temporary.is_file() else [p for p in temporary.rglob("*") if p.is_file()]:
            _fsync(file)
        if temporary.is_dir() and target.exists():  # a directory cannot be renamed over another
            previous = temporary_name(target)
            target.rename(previous)
            temporary.rename(target)
            _remove(previous)
        else:
            os.replace(temporary, target)
        _fsync(target.parent)
    finally:
        _remove(temporary)
