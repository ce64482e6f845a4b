"""SiTLLaMAPipeline: class-conditional images from a flow-matching denoiser (SiT-LLaMA or SiT)."""
from pipelines.base import ClassConditionalPipeline
from pipelines.settings import FlowSettings
from sampling import sample_ode, sample_sde
from sampling.flow import ADAPTIVE_SOLVERS


class SiTLLaMAPipeline(ClassConditionalPipeline):
    """Sampler options: sampler="ode" (probability-flow ODE, SiT's default) with method (a
    torchdiffeq solver: adaptive "dopri5" with atol/rtol, or fixed-step "euler", "heun", "rk4",
    ... taking num_inference_steps steps), or sampler="sde" with method "euler" / "heun",
    diffusion_form, diffusion_norm, last_step, last_step_size (see sampling.sample_sde)."""

    SAMPLER_OPTIONS = {
        "ode": ("method", "atol", "rtol"),
        "sde": ("method", "diffusion_form", "diffusion_norm", "last_step", "last_step_size"),
    }

    def __init__(self, transformer, scheduler: FlowSettings, vae=None, id2label=None):
        super().__init__(transformer, scheduler, vae, id2label)

    def sample(self, denoise, noise, labels, generator, sampler, num_inference_steps, progress, options):
        settings = self.scheduler.config
        if sampler == settings.sampler:
            options.setdefault("method", settings.method)  # the saved method belongs to the saved sampler
        steps = settings.num_inference_steps if num_inference_steps is None else num_inference_steps
        transport = self.scheduler.transport
        if sampler == "sde":
            return sample_sde(denoise, transport, noise, num_steps=steps, generator=generator, progress=progress,
                              y=labels, **options)
        if num_inference_steps is not None and options.get("method", "dopri5").lower() in ADAPTIVE_SOLVERS:
            raise ValueError(f"the ODE method {options.get('method', 'dopri5')!r} is adaptive (its steps follow "
                             "atol/rtol): leave num_inference_steps out, or choose a fixed-step method such as "
                             "method='euler' or 'heun'")
        return sample_ode(denoise, transport, noise, num_steps=steps, progress=progress, y=labels, **options)
