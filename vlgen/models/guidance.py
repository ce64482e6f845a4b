"""Classifier-free guidance arithmetic, shared by the denoiser and the samplers."""
import torch


def combine_guidance(cond, uncond, guidance_scale, guided_channels):
    """uncond + s * (cond - uncond) on the first guided_channels; the rest (e.g. learned
    variance) from the conditional output."""
    mixed = uncond[:, :guided_channels] + guidance_scale * (cond[:, :guided_channels] - uncond[:, :guided_channels])
    return torch.cat([mixed, cond[:, guided_channels:]], dim=1)
