"""DiTLLaMAPipeline: class-conditional images from a DDPM-trained denoiser (DiT-LLaMA or DiT)."""
from vlgen.pipelines.base import ClassConditionalPipeline
from vlgen.pipelines.schedulers import timestep_batch, uses_learned_variance
from vlgen.sampling import sample_ddim, sample_ddpm
from vlgen.diffusion import create_diffusion


def respaced_process(process, sampler, num_inference_steps, learn_sigma):
    """The model's GaussianDiffusion respaced to num_inference_steps ("ddimN" spacing for DDIM, as ADM)."""
    if num_inference_steps < 2:  # the clipped posterior variance of a respaced process needs two steps (ADM)
        raise ValueError(f"DDPM and DDIM sampling need num_inference_steps >= 2, got {num_inference_steps}")
    if num_inference_steps > process["diffusion_steps"]:
        raise ValueError(f"num_inference_steps={num_inference_steps} exceeds the {process['diffusion_steps']} steps "
                         "the model was trained with")
    spacing = f"ddim{num_inference_steps}" if sampler == "ddim" else str(num_inference_steps)
    return create_diffusion(spacing, process["noise_schedule"], process["diffusion_steps"], process["prediction"],
                            learn_sigma=learn_sigma)


class DiTLLaMAPipeline(ClassConditionalPipeline):
    """Samplers (pipe.use_sampler): vlgen's "ddpm" (ancestral, DiT's; clip_denoised) and "ddim"
    (eta, clip_denoised), and diffusers' DDPM-family schedulers over the model's betas
    ("diffusers-ddpm", "diffusers-ddim", "dpm-solver++", "dpm-solver++-karras", "unipc", "euler",
    "euler-ancestral", "heun", or any fitting one set as pipe.scheduler)."""

    KIND = "ddpm"

    def sample(self, denoise, noise, labels, generator, num_inference_steps, progress):
        settings = self.scheduler.config
        diffusion = respaced_process(self.config.process, settings.sampler, num_inference_steps,
                                     self.transformer.outputs_variance)
        if settings.sampler == "ddim":
            return sample_ddim(denoise, diffusion, noise, eta=settings.eta, clip_denoised=settings.clip_denoised,
                               generator=generator, progress=progress, y=labels)
        return sample_ddpm(denoise, diffusion, noise, clip_denoised=settings.clip_denoised, generator=generator,
                           progress=progress, y=labels)

    def scheduler_output(self, denoise, labels, scheduler):
        channels = self.transformer.config.in_channels
        keep = 2 * channels if uses_learned_variance(scheduler) else channels  # only DDPMScheduler takes the variance

        def model_output(x, t):
            return denoise(x, timestep_batch(t, x), labels)[:, :keep]

        return model_output
