"""The installed `vlgen` console script."""
import subprocess
import sys
from pathlib import Path

VLGEN = str(Path(sys.executable).parent / "vlgen")


def run(*args):
    return subprocess.run([VLGEN, *args], capture_output=True, text=True)


def test_smoke_run_trains_a_few_steps():
    result = run("smoke", "--model", "SiT-LLaMA-S/8", "--steps", "2", "--batch-size", "2", "--size", "16")
    assert result.returncode == 0, result.stderr
    assert "step 2: loss" in result.stdout and "smoke run OK" in result.stdout


def test_models_lists_every_name_with_its_count():
    result = run("models")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert len(lines) == 48
    # 675,129,632 in the reference count, less its frozen 256 x 1152 sin-cos table.
    assert lines["DiT-XL/2"] == f"{675_129_632 - 256 * 1152:,}"


def test_unknown_model_is_a_clear_error():
    result = run("smoke", "--model", "DiT-LLaMA-XXL/2")
    assert result.returncode == 2
    assert "unknown model 'DiT-LLaMA-XXL/2'" in result.stderr
