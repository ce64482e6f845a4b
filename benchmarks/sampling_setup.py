"""What the sampling benchmarks share: the command line, a named model with random weights and its inputs."""
import argparse

import torch

from vlgen.models import create_model


def random_weight_model(name, device):
    """The model with weights drawn at std 0.02: the reference init outputs zeros, which would
    make every sampler's work trivial."""
    torch.manual_seed(0)
    model = create_model(name).to(device).eval()
    for param in model.parameters():
        param.data.normal_(std=0.02)
    return model


def latent_batch(model, batch_size, device):
    """(noise, class labels) for one batch at the model's training resolution."""
    size = model.config.sample_size
    noise = torch.randn(batch_size, model.config.in_channels, size, size, device=device)
    return noise, torch.randint(0, model.config.num_classes, (batch_size,), device=device)


def sampling_arguments(description, *, batch_size, guidance_scale, model=None, repeats=None):
    """Parsed command line of a sampling benchmark: --batch-size, --steps (50), --guidance-scale,
    --device, and --model / --repeats where the benchmark has a default for them."""
    parser = argparse.ArgumentParser(description=description)
    if model is not None:
        parser.add_argument("--model", default=model)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=guidance_scale)
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()
