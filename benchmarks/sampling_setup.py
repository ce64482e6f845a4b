"""What the sampling benchmarks share: a named model with random weights and its inputs."""
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
