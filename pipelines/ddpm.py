"""DiTLLaMAPipeline: class-conditional images from a DDPM-trained denoiser (DiT-LLaMA or DiT)."""
from pipelines.base import ClassConditionalPipeline
from pipelines.settings import DDPMSettings
from sampling import sample_ddim, sample_ddpm

SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}


class DiTLLaMAPipeline(ClassConditionalPipeline):
    """Sampler options: sampler="ddpm" (ancestral, DiT's) or "ddim"; eta (DDIM noise, default 0);
    clip_denoised (clip predicted x0 to [-1, 1], default False as DiT)."""

    SAMPLER_OPTIONS = {"ddpm": ("clip_denoised",), "ddim": ("eta", "clip_denoised")}

    def __init__(self, transformer, scheduler: DDPMSettings, vae=None, id2label=None):
        super().__init__(transformer, scheduler, vae, id2label)

    def sample(self, denoise, noise, labels, generator, sampler, num_inference_steps, progress, options):
        steps = self.scheduler.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        cfg = self.transformer.config
        diffusion = self.scheduler.process(sampler, steps, learn_sigma=self.transformer.out_channels == 2 * cfg.in_channels)
        return SAMPLERS[sampler](denoise, diffusion, noise, generator=generator, progress=progress, y=labels, **options)
