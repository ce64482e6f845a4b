import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vlgen.models import create_model


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps its state per process: tests that make Accelerators reset it after them."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_model(name="DiT-LLaMA-S/2", randomize=True, **overrides):
    """A small-width model of a registered family; randomize replaces the zero init (adaLN-Zero
    makes the output and most gradients exactly zero at init, which hides mistakes)."""
    config = dict(hidden_size=32, depth=2, num_heads=2, sample_size=16, num_classes=10)
    model = create_model(name, **{**config, **overrides}).eval()
    if randomize:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 16, 16, generator=generator)
    t = torch.tensor([0.0, 321.0, 999.0])
    y = torch.tensor([0, 4, 9])
    return x, t, y


def write_image_folder(root, per_class=3, size=(40, 30)):
    """Three class folders (cat, ant, bee) of small PNGs."""
    for label, name in enumerate(["cat", "ant", "bee"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, (80 * label, 20 * i, 0)).save(root / name / f"{i}.png")
    return root


def tiny_vae(path, shift_factor=0.1):
    """A tiny AutoencoderKL (4 latent channels, factor 2) saved at path."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
                        shift_factor=shift_factor)
    vae.save_pretrained(path)
    return vae.eval()


class Interrupted(Exception):
    """Stands for the process being killed mid-run."""


def interrupt_training_after(monkeypatch, steps):
    """Make training die (as if killed) right after `steps` optimisation steps."""
    from vlgen.training.loop import Run

    original = Run.train_step

    def train_step(self, batch):
        if self.step == steps:
            raise Interrupted
        return original(self, batch)

    monkeypatch.setattr(Run, "train_step", train_step)


def two_process_launch():
    """`accelerate launch` of two CPU processes (torchrun, gloo; with ACCELERATE_USE_CPU=true) on a
    port of their own: a launch never meets the store of another one. `--cpu` would start one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
            "--dynamo_backend", "no"]


def run_launch(command, env, timeout=240):
    """Run a launch to the end; one that hangs fails with every process's Python stack (faulthandler
    prints them on SIGABRT) instead of a bare timeout."""
    process = subprocess.Popen(command, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command[:8])} ... did not end in {timeout} s; its stacks:\n{stderr[-8000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
