"""Classifier-free guidance as a wrapper over denoise(x, t, y): one batched forward per step.

The one implementation: the samplers, the pipelines and `VisionLLaMADenoiser.forward_with_cfg`
all guide through it.
"""
import math
import numbers

import torch


def classifier_free_guidance(denoise, guidance_scale, null_label, guided_channels, interval=None, *,
                             prediction_channels=None):
    """Wrap a denoiser in classifier-free guidance: uncond + s * (cond - uncond) on the guided channels.

    Args:
        denoise: the model, called as denoise(x, t, y).
        guidance_scale: s; at 1 the conditional model is returned as it is (no unconditional half).
        null_label: the unconditional class id (None when the model has none: then only scale 1 works).
        guided_channels: how many leading output channels to guide, the prediction channels (DiT's
            own code guides 3); the rest, e.g. learned variance, come from the conditional half.
        interval: optional (t_low, t_high) of model timesteps (or flow times) outside which the
            conditional prediction is used unguided.
        prediction_channels: when given, the most channels that may be guided (the model's in_channels).

    Returns:
        A function denoise_cfg(x, t, y) with the model's output shape.
    """
    if not (isinstance(guidance_scale, numbers.Real) and math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1 is the conditional model), "
                         f"got {guidance_scale!r}")
    highest = prediction_channels or guided_channels
    if isinstance(guided_channels, bool) or not isinstance(guided_channels, int) or not 0 < guided_channels <= highest:
        raise ValueError(f"guided_channels must be an integer in [1, {highest}], got {guided_channels!r}")
    if guidance_scale == 1:
        return denoise
    if null_label is None:
        raise ValueError("classifier-free guidance needs a null class, which a model gets from label dropout "
                         "(class_dropout_prob > 0); this one has none: use guidance_scale=1")

    def denoise_cfg(x, t, y):
        in_interval = None
        if interval is not None:
            in_interval = (t >= interval[0]) & (t <= interval[1])
            if not bool(in_interval.any()):
                return denoise(x, t, y)
        out = denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
        cond, uncond = out.chunk(2)
        g = guided_channels
        mixed = uncond[:, :g] + guidance_scale * (cond[:, :g] - uncond[:, :g])
        result = torch.cat([mixed, cond[:, g:]], dim=1)
        if in_interval is not None:
            result = torch.where(in_interval.view(-1, *[1] * (x.ndim - 1)), result, cond)
        return result

    return denoise_cfg
