"""Reproducible Gaussian noise and the finiteness check every sampler runs per step."""
import torch


def randn_like(x, generator=None):
    """Standard normal noise shaped like x, drawn on the generator's device (so a CPU generator
    gives the same numbers whatever device x is on)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def check_finite(output, step):
    if not torch.isfinite(output).all():
        raise FloatingPointError(
            f"model output has NaN or inf at sampling step {step}: the model diverged or its weights are "
            "corrupt; check the checkpoint and the dtype (try float32)"
        )
