"""vlgen's own samplers as pipeline schedulers: `DDPMSampler` (DiT's ancestral DDPM and DDIM over
the model's GaussianDiffusion) and `FlowSampler` (SiT's probability-flow ODE by torchdiffeq, and
its reverse SDE). A pipeline's `scheduler` component is the one place a sampler is chosen: one of
these, or a diffusers scheduler (`vlgen.pipelines.schedulers`).

Their configs also carry the diffusers keys of the model's process (betas, prediction type, ...),
written by the pipeline, so that `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`
is right; the samplers themselves take the process from the pipeline (`pipe.config.process`).

SchedulerMixin gives them diffusers' save_pretrained / from_pretrained; diffusers finds that load
method by looking the base class up in this module's namespace, so keep the import by name.
"""
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME, SchedulerMixin

from vlgen.core.choices import check_choice
from vlgen.transport import DIFFUSION_FORMS

DDPM_SAMPLERS = ("ddpm", "ddim")
FLOW_SAMPLERS = ("ode", "sde")


def check_steps(num_inference_steps):
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")


class DDPMSampler(SchedulerMixin, ConfigMixin):
    """Ancestral DDPM ("ddpm", DiT's sampler, with the model's learned-range variance) or DDIM
    ("ddim", eta = 0 deterministic) over num_inference_steps respaced steps (250 in DiT's
    evaluation). clip_denoised: clip the predicted x0 to [-1, 1] (DiT: no)."""

    config_name = SCHEDULER_CONFIG_NAME
    order = 1

    @register_to_config
    def __init__(self, sampler: str = "ddpm", num_inference_steps: int = 250, eta: float = 0.0,
                 clip_denoised: bool = False, num_train_timesteps: int = 1000, trained_betas: list | None = None,
                 prediction_type: str = "epsilon", variance_type: str = "learned_range",
                 timestep_spacing: str = "leading", clip_sample: bool = False, set_alpha_to_one: bool = True,
                 steps_offset: int = 0):
        check_choice("sampler", sampler, DDPM_SAMPLERS)
        check_steps(num_inference_steps)
        if not eta >= 0:
            raise ValueError(f"DDIM's eta must be >= 0 (0: deterministic, 1: DDPM's posterior variance), got {eta}")


class FlowSampler(SchedulerMixin, ConfigMixin):
    """The probability-flow ODE ("ode", SiT's default: adaptive dopri5 with atol 1e-6 / rtol 1e-3,
    or a fixed-step torchdiffeq method such as "euler" / "heun" over num_inference_steps steps) or
    the reverse SDE ("sde": method "euler" / "heun", diffusion_form, diffusion_norm, last_step,
    last_step_size; see vlgen.sampling.sample_sde). shift > 1 crowds the steps of a fixed-step
    method at the noise end (SD3's time shift, vlgen.sampling.flow.time_grid; LightningDiT's
    timestep_shift s is shift 1 / s, its 0.3 about 3.33)."""

    config_name = SCHEDULER_CONFIG_NAME
    order = 1

    @register_to_config
    def __init__(self, sampler: str = "ode", num_inference_steps: int = 250, method: str | None = None,
                 atol: float = 1e-6, rtol: float = 1e-3, diffusion_form: str = "sigma", diffusion_norm: float = 1.0,
                 last_step: str | None = "mean", last_step_size: float = 0.04, num_train_timesteps: int = 1000,
                 shift: float = 1.0):
        check_choice("sampler", sampler, FLOW_SAMPLERS)
        check_steps(num_inference_steps)
        check_choice("diffusion form", diffusion_form, DIFFUSION_FORMS)

    @property
    def method(self):
        """The solver: the configured one, else dopri5 for the ODE and euler for the SDE (SiT's)."""
        return self.config.method or ("dopri5" if self.config.sampler == "ode" else "euler")
