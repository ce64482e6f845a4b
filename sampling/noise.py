"""Reproducible Gaussian noise and the finiteness check every sampler runs per step."""
import torch


def randn(shape, generator=None, device="cpu", dtype=torch.float32):
    """Standard normal noise of this shape on device, drawn on the generator's device (so a CPU
    generator gives the same numbers whatever the device).

    generator: None, one torch.Generator for the whole batch, or a list of one generator per
    sample (row i comes from generator i alone, so a sample does not depend on its batch)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: pass one per sample")
        rows = [randn((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(rows)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def randn_like(x, generator=None):
    """Standard normal noise shaped like x (see randn for the generator forms)."""
    return randn(x.shape, generator, x.device, x.dtype)


def check_finite(output, step):
    if not torch.isfinite(output).all():
        raise FloatingPointError(
            f"model output has NaN or inf at sampling step {step}: the model diverged or its weights are "
            "corrupt; check the checkpoint and the dtype (try float32)"
        )
