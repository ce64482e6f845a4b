"""One command at a time per output: a lock held for a run's life, naming its holder.

The lock is an advisory `fcntl.flock` on OUTPUT/.vlgen.lock, which the operating system releases
when its process ends, however it ends: a lock file left by a dead process is stale, taken over
and reported. The file records who holds it (process, host, command, start), so a second command
on the same output is refused with a message that names the holder.
"""
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".vlgen.lock"


def _describe(holder):
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}, since {started})"


def _read_holder(handle):
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}


@contextmanager
def owned(directory, command=None):
    """Hold the lock of an output directory (created if needed) for the block. Raises ValueError
    naming the holder when another live process holds it; yields the stale holder's description
    (a process that died holding it) or None."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{directory} is in use by {_describe(_read_holder(handle))}: wait for it to finish, "
                             "or choose another output") from None
        previous = _read_holder(handle)
        stale = _describe(previous) if previous else None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": command or " ".join(["vlgen", *sys.argv[1:]])}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        try:
            yield stale
        finally:
            handle.seek(0)
            handle.truncate()  # an empty lock file: released cleanly
            handle.flush()
    finally:
        handle.close()
