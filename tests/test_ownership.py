"""The output lock where flock is not shared between nodes or missing: the exclusive creation of
OUTPUT/.vlgen.owner, naming the holder, taken over from a dead process on this host only."""
import errno
import fcntl
import json
import socket

import pytest

from vlgen.core import ownership
from vlgen.core.ownership import OWNER_FILE, node_local_locks, owned

MOUNTS = [("/", "ext4", ["rw", "relatime"]), ("/shared", "nfs4", ["rw", "vers=4.2", "local_lock=none"]),
          ("/shared/scratch", "nfs", ["rw", "nolock"]), ("/lustre", "lustre", ["rw", "localflock"]),
          ("/lustre2", "lustre", ["rw", "flock"])]


@pytest.mark.parametrize("path, expected", [
    ("/home/me/run", None), ("/shared/run", None), ("/shared/scratch/run", "nfs mounted at /shared/scratch with nolock"),
    ("/shared/scratch", "nfs mounted at /shared/scratch with nolock"), ("/shared/scratchy/run", None),
    ("/lustre/run", "lustre mounted at /lustre with localflock"), ("/lustre2/run", None)])
def test_node_local_flock_is_recognised_from_the_mount_options(path, expected):
    assert node_local_locks(path, MOUNTS) == expected


@pytest.fixture
def no_flock(monkeypatch):
    """A file system whose flock answers ENOSYS (Lustre mounted noflock)."""
    def flock(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", flock)


def test_without_flock_the_owner_file_locks_names_the_holder_and_is_removed(tmp_path, no_flock, capsys,
                                                                            monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with owned(tmp_path, command="vlgen train (first)") as stale:
        assert stale is None
        assert "file locks are not shared between nodes here (flock answers ENOSYS)" in capsys.readouterr().err
        holder = json.loads((tmp_path / OWNER_FILE).read_text())
        assert holder["job"] == "4242" and holder["host"] == socket.gethostname()
        with pytest.raises(ValueError, match=r"is in use by process \d+ on .*vlgen train \(first\), job 4242"):
            with owned(tmp_path):
                pass
    assert not (tmp_path / OWNER_FILE).exists()


def test_a_dead_holder_on_this_host_is_taken_over_and_one_elsewhere_is_named_with_the_file_to_delete(tmp_path,
                                                                                                  no_flock):
    (tmp_path / OWNER_FILE).write_text(json.dumps({"pid": 999999, "host": socket.gethostname(), "started": 0,
                                                   "command": "vlgen train"}))
    with owned(tmp_path) as stale:
        assert "process 999999" in stale
    (tmp_path / OWNER_FILE).write_text(json.dumps({"pid": 1, "host": "node-17", "started": 0, "command": "vlgen train"}))
    with pytest.raises(ValueError, match=f"process 1 on node-17 .*if it has ended, delete {tmp_path / OWNER_FILE}"):
        with owned(tmp_path):
            pass


def test_a_node_local_flock_mount_takes_the_owner_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ownership, "read_mounts", lambda: [(str(tmp_path), "nfs", ["rw", "nolock"])])
    with owned(tmp_path):
        assert (tmp_path / OWNER_FILE).is_file()
    assert "with nolock" in capsys.readouterr().err and not (tmp_path / OWNER_FILE).exists()
