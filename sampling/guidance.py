"""Classifier-free guidance as a wrapper over denoise(x, t, y): one batched forward per step."""
import torch

from vlgen.models.guidance import combine_guidance


def classifier_free_guidance(denoise, guidance_scale, null_label, guided_channels, interval=None):
    """Return denoise_cfg(x, t, y).

    denoise: the model, called as denoise(x, t, y). null_label: the unconditional class id.
    guided_channels: how many leading output channels to guide (the prediction channels; never
    learned variance). interval: optional (t_low, t_high) of model timesteps (or flow times)
    outside which the conditional prediction is used unguided.
    """
    if guidance_scale == 1.0:
        return denoise  # guidance at scale 1 is the conditional model: skip the extra half batch

    def denoise_cfg(x, t, y):
        in_interval = None
        if interval is not None:
            in_interval = (t >= interval[0]) & (t <= interval[1])
            if not bool(in_interval.any()):
                return denoise(x, t, y)
        out = denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
        cond, uncond = out.chunk(2)
        guided = combine_guidance(cond, uncond, guidance_scale, guided_channels)
        if in_interval is not None:
            guided = torch.where(in_interval.view(-1, *[1] * (x.ndim - 1)), guided, cond)
        return guided

    return denoise_cfg
