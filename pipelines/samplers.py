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
    """vlgen's DDPM samplers as a pipeline scheduler: ancestral DDPM or DDIM over respaced steps.

    Args:
        sampler: "ddpm" (ancestral, DiT's sampler, with the model's learned-range variance) or
            "ddim".
        num_inference_steps: respaced steps (250 in DiT's evaluation).
        eta: DDIM's noise (0: deterministic, 1: DDPM's posterior variance).
        clip_denoised: clip the predicted x0 to [-1, 1] (DiT: no).
        num_train_timesteps: diffusers' key of the model's process, written by the pipeline.
        trained_betas: diffusers' key of the model's process, written by the pipeline.
        prediction_type: diffusers' key of the model's process, written by the pipeline.
        variance_type: diffusers' key of the model's process, written by the pipeline.
        timestep_spacing: diffusers' key, so that diffusers' schedulers built from this config fit.
        clip_sample: diffusers' key, so that diffusers' schedulers built from this config fit.
        set_alpha_to_one: diffusers' key, so that diffusers' schedulers built from this config fit.
        steps_offset: diffusers' key, so that diffusers' schedulers built from this config fit.
    """

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
    """vlgen's flow samplers as a pipeline scheduler: the probability-flow ODE or the reverse SDE.

    Args:
        sampler: "ode" (SiT's default) or "sde" (see vlgen.sampling.sample_sde).
        num_inference_steps: steps of a fixed-step method (the adaptive ODE ignores it).
        method: the ODE's torchdiffeq method ("dopri5" by default, adaptive; or a fixed-step one
            such as "euler", "heun") or the SDE's ("euler" by default, or "heun").
        atol: absolute tolerance of the adaptive ODE.
        rtol: relative tolerance of the adaptive ODE.
        diffusion_form: the SDE's w_t (DIFFUSION_FORMS).
        diffusion_norm: the scale of the SDE's w_t.
        last_step: the SDE's last, noiseless step: "mean", "tweedie", "euler" or None.
        last_step_size: the size of that step.
        num_train_timesteps: diffusers' key, so that diffusers' schedulers built from this config fit.
        shift: > 1 crowds the steps of a fixed-step method at the noise end (SD3's time shift,
            vlgen.sampling.flow.time_grid; LightningDiT's timestep_shift s is shift 1 / s, its 0.3
            about 3.33).
    """

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
