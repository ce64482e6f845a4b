"""The one interface of the two training objectives, and the objective of a saved setting.

`GaussianDiffusion` (DDPM, vlgen.diffusion) and `Transport` (SiT interpolants, vlgen.transport)
both implement `Objective`, so training and the pipelines use either without knowing which.
"""
from typing import Protocol, runtime_checkable

from vlgen.core.choices import check_choice
from vlgen.diffusion import create_diffusion
from vlgen.transport import Transport

KINDS = ("ddpm", "flow")
# The objective settings of a training config (its `objective` section) that build each kind.
SETTINGS = {
    "ddpm": ("noise_schedule", "diffusion_steps", "prediction", "time_sampling", "logit_mean", "logit_std"),
    "flow": ("path", "prediction", "loss_weight", "train_eps", "sample_eps", "time_sampling", "logit_mean",
             "logit_std"),
}


@runtime_checkable
class Objective(Protocol):
    kind: str  # "ddpm" or "flow"
    default_sampler: str  # the sampler (vlgen.pipelines.SCHEDULERS name) a pipeline of this objective uses by default
    prediction: str  # what the model outputs ("eps", "velocity", ...)

    def sample_times(self, batch_size, device, generator=None):
        """(batch_size,) training times (DDPM step indices or flow times)."""

    def training_losses(self, model, x, t, noise=None, **model_kwargs):
        """dict with "loss", the per-sample loss (N,), of data x at times t with this noise."""


def create_objective(settings, learn_sigma):
    """The objective of a settings mapping (kind plus the keys of SETTINGS[kind]; a missing or
    None value takes the objective's own default). learn_sigma: whether the model has
    learned-variance channels (DDPM's learned-range sigma; flow objectives need a model without)."""
    kind = check_choice("objective kind", settings.get("kind"), KINDS)
    given = {key: settings[key] for key in SETTINGS[kind] if settings.get(key) is not None}
    if kind == "ddpm":
        return create_diffusion(learn_sigma=learn_sigma, **given)
    if learn_sigma:
        raise ValueError("the flow objective trains a model without learned-sigma channels: use a SiT-* or "
                         "SiT-LLaMA-* model, or the ddpm objective for DiT-* / DiT-LLaMA-*")
    return Transport(**given)
