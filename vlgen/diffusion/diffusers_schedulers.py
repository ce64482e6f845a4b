"""diffusers schedulers configured from our diffusion settings, so a trained model can also be
sampled with DDPMScheduler, DDIMScheduler or DPMSolverMultistepScheduler."""
from vlgen.diffusion.schedules import beta_schedule

_PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHEDULER_KINDS = ("ddpm", "ddim", "dpm-solver")


def diffusers_scheduler(kind="ddpm", noise_schedule="linear", diffusion_steps=1000, prediction="eps",
                        learn_sigma=True, sigma_small=False):
    """A diffusers scheduler over the same betas as create_diffusion(...) with these arguments.

    With learned sigma, DDPMScheduler uses the learned-range variance; DDIM ignores the variance
    channels (pass it only the first half of the model output); DPM-Solver drops them itself.
    For a respaced DDPM process, call `set_timesteps(timesteps=diffusion.timestep_map[::-1])`.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if kind not in SCHEDULER_KINDS:
        raise ValueError(f"unknown scheduler kind {kind!r}; choose from {SCHEDULER_KINDS}")
    common = dict(
        num_train_timesteps=diffusion_steps,
        trained_betas=beta_schedule(noise_schedule, diffusion_steps).tolist(),
        prediction_type=_PREDICTION_TYPES[prediction],
    )
    if kind == "ddpm":
        variance = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
        return DDPMScheduler(**common, variance_type=variance, clip_sample=False)
    if kind == "ddim":
        # "leading" spacing with offset 0 and alpha_bar_prev = 1 at the end equals our "ddimN".
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    return DPMSolverMultistepScheduler(**common, variance_type="learned_range" if learn_sigma else None)
