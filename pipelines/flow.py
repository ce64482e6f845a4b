"""SiTLLaMAPipeline: class-conditional images from a flow-matching denoiser (SiT-LLaMA or SiT)."""
from vlgen.pipelines.base import ClassConditionalPipeline
from vlgen.pipelines.schedulers import flow_model_output, flow_time, process_transport, timestep_batch
from vlgen.sampling import sample_ode, sample_sde
from vlgen.sampling.flow import ADAPTIVE_SOLVERS


class SiTLLaMAPipeline(ClassConditionalPipeline):
    """Samplers (pipe.use_sampler): vlgen's "ode" (the probability-flow ODE by torchdiffeq, SiT's
    default: adaptive "dopri5" with atol / rtol, or a fixed-step method such as "euler", "heun",
    "rk4" over num_inference_steps steps) and "sde" (method "euler" / "heun", diffusion_form,
    diffusion_norm, last_step, last_step_size; see vlgen.sampling.sample_sde), and diffusers'
    flow-matching schedulers ("flow-euler", "flow-heun") for Linear-path velocity models."""

    KIND = "flow"

    def sample(self, denoise, noise, labels, generator, num_inference_steps, progress):
        settings, method = self.scheduler.config, self.scheduler.method
        transport = process_transport(self.config.process)
        if settings.sampler == "sde":
            return sample_sde(denoise, transport, noise, method=method, diffusion_form=settings.diffusion_form,
                              diffusion_norm=settings.diffusion_norm, last_step=settings.last_step,
                              last_step_size=settings.last_step_size, num_steps=num_inference_steps,
                              time_shift=settings.shift, generator=generator, progress=progress, y=labels)
        if method.lower() in ADAPTIVE_SOLVERS and num_inference_steps != settings.num_inference_steps:
            raise ValueError(f"the ODE method {method!r} is adaptive (its steps follow atol/rtol): leave "
                             "num_inference_steps out, or choose a fixed-step method: "
                             "pipe.use_sampler('ode', method='euler') or 'heun'")
        return sample_ode(denoise, transport, noise, method=method, num_steps=num_inference_steps,
                          atol=settings.atol, rtol=settings.rtol, time_shift=settings.shift, progress=progress,
                          y=labels)

    def scheduler_output(self, denoise, labels, scheduler):
        def model_output(x, t):
            return flow_model_output(denoise(x, flow_time(timestep_batch(t, x)), labels))

        return model_output
