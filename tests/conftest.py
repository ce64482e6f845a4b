import pytest
import torch
from PIL import Image

from vlgen.models import create_model


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


def tiny_vae(path):
    """A tiny AutoencoderKL (4 latent channels, factor 2) saved at path."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1)
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
