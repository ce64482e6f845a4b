"""The diffusers scheduler config of a Gaussian diffusion process: any diffusers DDPM-family
scheduler made `from_config` of it samples over the same betas and prediction as
create_diffusion(...) with these arguments.

- betas are written out (`trained_betas`), so any schedule and step count carries over exactly;
- `timestep_spacing="leading"` (t = 0, T/N, 2T/N, ...) is ADM's DDIM spacing ("ddimN"): the
  first step is at T - T/N, not at T - 1, where the cosine schedule's alpha-bar (~2e-9) makes
  an eps prediction's x0 useless to a few-step solver (measured: README, Which sampler).
  `"linspace"` is ADM's DDPM respacing ("250": round(linspace(0, T - 1, 250))): DDPMScheduler
  with it visits the steps of our N-step respaced process;
- with learned sigma, `variance_type="learned_range"` makes DDPMScheduler use the model's
  variance (ADM's learned range); DDIM, Euler, UniPC, ... take only the prediction channels.
"""
from vlgen.diffusion.schedules import beta_schedule

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # ours -> diffusers'


def diffusers_config(noise_schedule="linear", diffusion_steps=1000, prediction="eps", learn_sigma=True,
                     sigma_small=False):
    variance = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
    return {
        "num_train_timesteps": diffusion_steps,
        "trained_betas": beta_schedule(noise_schedule, diffusion_steps).tolist(),
        "prediction_type": PREDICTION_TYPES[prediction],
        "variance_type": variance,
        "timestep_spacing": "leading",
        "clip_sample": False,
        "set_alpha_to_one": True,  # DDIM's last step lands on the data (alpha_bar_prev = 1), as ours
        "steps_offset": 0,
    }
