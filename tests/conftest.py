import pytest
import torch

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
