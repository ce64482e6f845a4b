"""The sampler settings of a pipeline: the process the denoiser was trained with and the default
sampler. They are the pipeline's `scheduler` component, saved as scheduler/scheduler_config.json.

SchedulerMixin gives them diffusers' save_pretrained / from_pretrained; diffusers finds that load
method by looking the base class up in this module's namespace, so keep the import by name.
"""
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME, SchedulerMixin

from vlgen.core.choices import check_choice
from vlgen.diffusion import GaussianDiffusion, create_diffusion
from vlgen.diffusion.gaussian import DEFAULT_PREDICTION as DDPM_PREDICTION
from vlgen.diffusion.gaussian import PREDICTIONS
from vlgen.diffusion.schedules import SCHEDULES
from vlgen.transport import Transport
from vlgen.transport.transport import DEFAULT_PREDICTION as FLOW_PREDICTION

DDPM_SAMPLERS = ("ddpm", "ddim")
FLOW_SAMPLERS = ("ode", "sde")


def _check_steps(num_inference_steps):
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")


class DDPMSettings(SchedulerMixin, ConfigMixin):
    """A DDPM-trained denoiser (DiT, DiT-LLaMA): its noise schedule, number of training steps and
    prediction; sampled by ancestral DDPM ("ddpm", DiT's sampler) or DDIM ("ddim") over
    num_inference_steps respaced steps (250 in DiT's evaluation)."""

    config_name = SCHEDULER_CONFIG_NAME

    @register_to_config
    def __init__(self, noise_schedule: str = "linear", diffusion_steps: int = 1000, prediction: str = DDPM_PREDICTION,
                 sampler: str = GaussianDiffusion.default_sampler, num_inference_steps: int = 250):
        check_choice("noise schedule", noise_schedule, SCHEDULES)
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("sampler", sampler, DDPM_SAMPLERS)
        _check_steps(num_inference_steps)

    def process(self, sampler, num_inference_steps, learn_sigma):
        """The GaussianDiffusion respaced to num_inference_steps ("ddimN" spacing for DDIM, as ADM)."""
        check_choice("sampler", sampler, DDPM_SAMPLERS)
        _check_steps(num_inference_steps)
        if num_inference_steps < 2:  # the clipped posterior variance of a respaced process needs two steps (ADM)
            raise ValueError(f"DDPM and DDIM sampling need num_inference_steps >= 2, got {num_inference_steps}")
        if num_inference_steps > self.config.diffusion_steps:
            raise ValueError(f"num_inference_steps={num_inference_steps} exceeds the {self.config.diffusion_steps} "
                             "steps the model was trained with")
        spacing = f"ddim{num_inference_steps}" if sampler == "ddim" else str(num_inference_steps)
        return create_diffusion(spacing, self.config.noise_schedule, self.config.diffusion_steps,
                                self.config.prediction, learn_sigma=learn_sigma)


class FlowSettings(SchedulerMixin, ConfigMixin):
    """A flow-matching denoiser (SiT, SiT-LLaMA): its interpolant path, prediction and sampling
    margin; sampled by the probability-flow ODE ("ode": SiT's default, adaptive dopri5 with
    atol 1e-6 / rtol 1e-3) or the reverse SDE ("sde", num_inference_steps steps)."""

    config_name = SCHEDULER_CONFIG_NAME

    @register_to_config
    def __init__(self, path: str = "Linear", prediction: str = FLOW_PREDICTION, sample_eps: float | None = None,
                 sampler: str = Transport.default_sampler, method: str = "dopri5", num_inference_steps: int = 250):
        check_choice("sampler", sampler, FLOW_SAMPLERS)
        _check_steps(num_inference_steps)
        self.transport = Transport(path, prediction, sample_eps=sample_eps)  # checks path, prediction, sample_eps
