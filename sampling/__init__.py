"""Samplers as plain functions over one contract, denoise(x, t, **cond)."""
from vlgen.sampling.ddpm import sample_ddim, sample_ddpm
from vlgen.sampling.flow import log_likelihood, sample_ode, sample_sde
from vlgen.core.guidance import classifier_free_guidance

__all__ = ["sample_ddpm", "sample_ddim", "sample_ode", "sample_sde", "log_likelihood", "classifier_free_guidance"]
