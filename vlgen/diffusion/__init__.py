"""ADM-style Gaussian diffusion (DDPM): schedules, respacing, posterior, hybrid loss."""
from vlgen.diffusion.gaussian import GaussianDiffusion, create_diffusion
from vlgen.diffusion.schedules import beta_schedule, space_timesteps

__all__ = ["GaussianDiffusion", "create_diffusion", "beta_schedule", "space_timesteps"]
