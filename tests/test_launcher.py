"""The warning for `accelerate launch --cpu --num_processes N`, which starts one process."""
import subprocess
import sys

import pytest

from vlgen.commands.launcher import launcher_warning, requested_processes


@pytest.mark.parametrize("words, expected", [
    (["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "vlgen"], 2),
    (["python", "-m", "accelerate.commands.launch", "--num_processes=4", "-m", "vlgen", "train"], 4),
    (["/venv/bin/accelerate", "launch", "-m", "vlgen", "train"], None),  # no process count asked for
    (["bash", "run.sh", "--num_processes", "2"], None),  # not accelerate
    (["/venv/bin/accelerate", "launch", "--num_processes"], None),
])
def test_the_requested_process_count_is_read_from_the_launcher(words, expected):
    assert requested_processes(words) == expected


def test_a_launch_with_fewer_processes_than_asked_warns_with_the_working_command():
    launcher = ["/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "vlgen", "train"]
    warning = launcher_warning(launcher, world_size=1)
    assert "asked for 2 processes but started 1" in warning
    assert "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2" in warning
    assert launcher_warning(launcher, world_size=2) is None
    assert launcher_warning(["python", "-m", "vlgen", "train"], world_size=1) is None


@pytest.mark.slow
def test_the_command_warns_under_such_a_launcher():
    """The parent of `vlgen` is a process whose command line asks accelerate for 2 processes."""
    parent = ("import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-m', 'vlgen', 'models'], "
              "capture_output=True, text=True).stderr.count('asked for 2 processes but started 1'))")
    result = subprocess.run([sys.executable, "-c", parent, "accelerate", "launch", "--num_processes", "2"])
    assert result.returncode == 1
