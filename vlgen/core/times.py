"""How training times are drawn, the same for both objectives: uniform, or logit-normal (more of
them at mid noise; SD3's and LightningDiT's)."""
import torch

from vlgen.core.choices import check_choice

TIME_SAMPLINGS = ("uniform", "logit-normal")


def check_time_sampling(time_sampling, logit_std):
    check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    if not logit_std > 0:
        raise ValueError(f"logit_std must be positive, got {logit_std}")


def unit_times(batch_size, generator, device, time_sampling="uniform", logit_mean=0.0, logit_std=1.0):
    """(batch_size,) numbers in (0, 1): uniform, or sigmoid(logit_mean + logit_std * z), z ~ N(0, 1),
    drawn on the generator's device."""
    if time_sampling == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    z = torch.randn(batch_size, generator=generator, device=device)
    return torch.sigmoid(logit_mean + logit_std * z)
