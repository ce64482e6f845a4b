"""A warning for the launch that silently starts one process where several were asked for.

`accelerate launch --cpu --num_processes 2 ...` starts a single process (accelerate runs several
CPU processes only under mpirun); `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
--num_processes 2 ...` starts two on gloo. A process can see the launcher's command line as its
parent's.
"""
import os
import re
from pathlib import Path

MULTI_PROCESS_CPU = "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes {n} -m vlgen ..."


def requested_processes(launcher_arguments):
    """The --num_processes of an `accelerate launch` command line (a list of its words), or None."""
    words = list(launcher_arguments)
    if not any(word.endswith("accelerate") or word == "accelerate.commands.launch" for word in words):
        return None
    for index, word in enumerate(words):
        match = re.fullmatch(r"--num_processes(?:=(\d+))?", word)
        if match:
            value = match.group(1) or (words[index + 1] if index + 1 < len(words) else "")
            return int(value) if value.isdigit() else None
    return None


def launcher_warning(launcher_arguments, world_size):
    """The warning for a launcher that asked for more processes than the world has, or None."""
    requested = requested_processes(launcher_arguments)
    if requested is None or requested <= world_size:
        return None
    return (f"accelerate launch asked for {requested} processes but started {world_size}: its --cpu launcher starts "
            f"one process unless under mpirun. For {requested} CPU processes run: "
            + MULTI_PROCESS_CPU.format(n=requested))


def parent_command_line():
    """The parent process's command line as words (Linux); [] where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [word.decode(errors="replace") for word in raw.split(b"\0") if word]


def check_launcher():
    """The warning for this process's launch, or None (world size from torchrun's WORLD_SIZE)."""
    return launcher_warning(parent_command_line(), launched_processes())


def launched_processes():
    """How many processes the launch of this one started (torchrun's WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
