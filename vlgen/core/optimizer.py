"""AdamW as every training loop of the toolkit builds it."""
import torch

FUSED_DEVICE_TYPES = ("cpu", "cuda")  # devices with torch's fused AdamW kernel


def create_adamw(parameters, *, lr, betas=(0.9, 0.999), weight_decay=0.0):
    """torch's AdamW, fused (one pass over each tensor per step instead of several) when every
    parameter lives on a device that has the fused kernel."""
    parameters = list(parameters)
    fused = bool(parameters) and all(p.device.type in FUSED_DEVICE_TYPES for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
