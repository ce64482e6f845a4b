"""One command at a time per output: a lock held for a run's life, naming its holder.

The lock is an advisory `fcntl.flock` on OUTPUT/.vlgen.lock, which the operating system releases
when its process ends, however it ends: a lock file left by a dead process is stale, taken over
and reported. The file records who holds it (process, host, job, command, start), so a second
command on the same output is refused with a message that names the holder.

Where flock is not shared between nodes (NFS mounted `nolock` or `local_lock=flock|all`, Lustre
`localflock`) or not there at all (Lustre `noflock` answers ENOSYS), the lock is the exclusive
creation of OUTPUT/.vlgen.owner instead, removed on release. A process that dies leaves that file
behind: on its own host vlgen sees that the process is gone and takes over; from another host it
cannot tell, and says which file to delete.
"""
import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".vlgen.lock"
OWNER_FILE = ".vlgen.owner"
NODE_LOCAL_OPTIONS = {"nfs": ("nolock", "local_lock=flock", "local_lock=all"), "lustre": ("localflock",)}
NO_FLOCK = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL)  # what file systems without flock answer
JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def _describe(holder):
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    job = f", job {holder['job']}" if holder.get("job") else ""
    return f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}{job}, since {started})"


def _holder(command):
    job = next((os.environ[name] for name in JOB_VARIABLES if os.environ.get(name)), None)
    return {"pid": os.getpid(), "host": socket.gethostname(), "job": job, "started": time.time(),
            "command": command or " ".join(["vlgen", *sys.argv[1:]])}


def _read_holder(handle):
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}


def read_mounts():
    """(mount point, file system type, options) of every mount, from /proc/mounts (empty elsewhere)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4:
            mounts.append((fields[1].replace("\\040", " "), fields[2], fields[3].split(",")))
    return mounts


def node_local_locks(directory, mounts=None):
    """Why flock on directory would lock on this node only (the mount's type and option), or None."""
    path = str(Path(directory).resolve())
    found = [mount for mount in (read_mounts() if mounts is None else mounts)
             if path == mount[0] or path.startswith(mount[0].rstrip("/") + "/")]
    if not found:
        return None
    point, fs_type, options = max(found, key=lambda mount: len(mount[0]))
    family = "nfs" if fs_type.startswith("nfs") else fs_type
    local = [option for option in options if option in NODE_LOCAL_OPTIONS.get(family, ())]
    return f"{fs_type} mounted at {point} with {local[0]}" if local else None


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _owner_file(directory, command, why):
    """The lock as the exclusive creation of directory/OWNER_FILE (see the module's note)."""
    path = directory / OWNER_FILE
    print(f"{directory}: file locks are not shared between nodes here ({why}); holding {path} while running",
          file=sys.stderr)
    stale = None
    for attempt in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            same_host = holder.get("host") == socket.gethostname()
            if attempt == 0 and same_host and isinstance(holder.get("pid"), int) and not _process_alive(holder["pid"]):
                stale = _describe(holder)
                path.unlink(missing_ok=True)
                continue
            hint = ("" if same_host else f"; vlgen cannot tell from here whether it still runs: if it has ended, "
                                         f"delete {path}")
            raise ValueError(f"{directory} is in use by {_describe(holder)}{hint}") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(_holder(command)))
    try:
        yield stale
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def _recorded(handle, command):
    """Write this process as the holder of a locked handle; empty it again on release. Yields the
    description of the holder the file still named (one that died holding the lock), or None."""
    previous = _read_holder(handle)
    stale = _describe(previous) if previous else None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder(command)))
    handle.flush()
    try:
        yield stale
    finally:
        handle.seek(0)
        handle.truncate()  # an empty lock file: released cleanly
        handle.flush()


@contextmanager
def owned(directory, command=None):
    """Hold the lock of an output directory (created if needed) for the block. Raises ValueError
    naming the holder when another live process holds it; yields the stale holder's description
    (a process that died holding it) or None."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    reason = node_local_locks(directory)
    if reason is None:
        with open(directory / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"{directory} is in use by {_describe(_read_holder(handle))}: wait for it to "
                                 "finish, or choose another output") from None
            except OSError as error:
                if error.errno not in NO_FLOCK:
                    raise
                reason = f"flock answers {errno.errorcode.get(error.errno, error.errno)}"
            else:
                with _recorded(handle, command) as stale:
                    yield stale
                return
    with _owner_file(directory, command, reason) as stale:
        yield stale
