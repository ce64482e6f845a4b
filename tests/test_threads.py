"""The CPU thread policy: threads from the CPUs a process may use, divided among a launch's processes."""
import os
import subprocess
import sys

import pytest

from vlgen.core import threads
from vlgen.core.threads import threads_per_process, usable_cpus


def cgroup(tmp_path, v2=None, v1=None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


@pytest.mark.parametrize("v2, v1, affinity, expected", [
    (None, None, 8, 8),  # no cgroup files: the affinity mask
    ("max 100000", None, 8, 8),  # cgroup v2 without a quota
    ("150000 100000", None, 8, 2),  # 1.5 CPUs: two threads, part of the time
    ("400000 100000", None, 2, 2),  # a quota above the affinity: the affinity
    (None, (-1, 100000), 4, 4),  # cgroup v1 without a quota
    (None, (100000, 100000), 4, 1),
])
def test_usable_cpus_are_the_affinity_bounded_by_the_quota(monkeypatch, tmp_path, v2, v1, affinity, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert usable_cpus(cgroup(tmp_path, v2, v1)) == expected


def test_auto_divides_the_cpus_among_the_processes_of_this_machine(monkeypatch):
    assert threads_per_process("auto", processes_here=1, cpus=4) == 4
    assert threads_per_process("auto", processes_here=2, cpus=4) == 2
    assert threads_per_process("auto", processes_here=3, cpus=2) == 1  # never fewer than one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # what accelerate launch / torchrun set
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    assert threads_per_process("auto") == 1


@pytest.mark.parametrize("setting", ["0", "-1", "two", "1.5", True])
def test_a_bad_setting_is_refused(setting):
    with pytest.raises(ValueError, match="threads must be a positive integer or auto"):
        threads_per_process(setting)


def test_the_command_applies_the_setting_before_torch_loads(tmp_path):
    """`vlgen sample --threads 1`: torch has one thread and OpenMP's idle threads sleep; the
    command then fails on its missing pipeline, after the policy was applied."""
    probe = ("import os, sys, vlgen.commands.cli as cli\n"
             "code = cli.main(sys.argv[1:])\n"
             "import torch\n"
             "print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], code)\n")
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", probe, "sample", "--threads", "1", "--pipeline",
                             str(tmp_path / "none"), "--grid", str(tmp_path / "grid.png")],
                            capture_output=True, text=True, env=environment)
    assert result.stdout.splitlines()[-1].split() == ["1", "PASSIVE", "2"], result.stderr
    assert result.stdout.startswith("threads: 1 per process (")
    result = subprocess.run([sys.executable, "-m", "vlgen", "train", "--threads", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and "--threads must be a positive integer or auto, got '0'" in result.stderr
