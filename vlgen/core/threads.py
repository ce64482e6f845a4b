"""How many CPU threads a vlgen process runs, from the CPUs it may really use.

`os.cpu_count()` counts the machine, not what this process may use: a container's CPU quota or a
`taskset` affinity can leave it far fewer, and more torch threads than usable CPUs make every
parallel op wait at a barrier for a thread the OS has descheduled. `--threads auto` (the default)
takes the usable CPUs (affinity, then a cgroup quota), divides them among the processes that a
launch starts on this machine, and gives each process that many torch threads. OpenMP's idle
threads are told to sleep rather than spin (OMP_WAIT_POLICY=PASSIVE, unless already set), so
that they do not take CPU time from other processes on a shared machine.
"""
import math
import os
from pathlib import Path

WAIT_POLICY = "PASSIVE"


def _cgroup_quota(root=Path("/sys/fs/cgroup")):
    """CPUs of a cgroup quota (v2 cpu.max, else v1 cfs files), or None where there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root=Path("/sys/fs/cgroup")):
    """The CPUs this process may run on: its affinity mask, at most its cgroup quota (rounded up:
    a quota of 1.5 CPUs still runs two threads part of the time)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def threads_per_process(setting, processes_here=None, cpus=None):
    """Torch threads for one process: `setting` threads, or for "auto" the usable CPUs divided among
    the processes of this machine (LOCAL_WORLD_SIZE of a launch, else 1), at least one."""
    if setting != "auto":
        if isinstance(setting, bool) or not str(setting).isdigit() or int(setting) < 1:
            raise ValueError(f"threads must be a positive integer or auto, got {setting!r}")
        return int(setting)
    processes_here = processes_here or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cpus = cpus or usable_cpus()
    return max(1, cpus // processes_here)


def apply_thread_policy(setting="auto"):
    """Set this process's torch threads (threads_per_process) and OpenMP wait policy; returns the
    thread count. Call it before torch is imported: OpenMP reads its environment once, at load."""
    threads = threads_per_process(setting)
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch  # here, after the environment is set

    torch.set_num_threads(threads)
    return threads


def threads_line():
    """One line on the threads this process computes with, for the start of a command."""
    import torch

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return (f"threads: {torch.get_num_threads()} per process ({usable_cpus()} usable CPUs, {processes} "
            f"process{'es' if processes > 1 else ''} on this machine; --threads sets it)")
