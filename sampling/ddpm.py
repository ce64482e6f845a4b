"""DDPM ancestral and DDIM sampling over a GaussianDiffusion, for any denoise(x, t, **cond)."""
import torch
from tqdm.auto import tqdm

from vlgen.sampling.noise import FiniteCheck, randn_like
from vlgen.diffusion.gaussian import gather


def _steps(diffusion, progress, desc):
    indices = list(range(diffusion.num_timesteps))[::-1]
    return tqdm(indices, desc=desc, disable=not progress, leave=False)


def _predict(denoise, diffusion, x, i, clip_denoised, cond, finite):
    """One model evaluation at step i: (t, p(x_{t-1} | x_t) as p_mean_variance's dict)."""
    t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    output = denoise(x, diffusion.model_timesteps(t), **cond)
    finite.see(output, i)
    return t, diffusion.p_mean_variance(output, x, t, clip_denoised=clip_denoised)


@torch.no_grad()
def sample_ddpm(denoise, diffusion, noise, *, clip_denoised=False, generator=None, progress=True, **cond):
    """Ancestral sampling: x_{t-1} = mean + exp(log_var / 2) * z from x_T = noise.

    Every step of the (respaced) process; no noise is added at the last step.

    Args:
        denoise: the model, denoise(x, t, **cond), t the process's integer timesteps.
        diffusion: a GaussianDiffusion (`create_diffusion`), respaced for fewer steps.
        noise: x_T, the starting Gaussian noise; its shape is the samples'.
        clip_denoised: clip the predicted x_0 to [-1, 1] (DiT: no).
        generator: a torch.Generator for the sampling noise (reproducible runs).
        progress: show a progress bar.
        **cond: passed to denoise on every call, e.g. y=labels.

    Returns:
        Tensor: the samples x_0.
    """
    x, finite = noise, FiniteCheck()
    for i in _steps(diffusion, progress, "DDPM"):
        _, out = _predict(denoise, diffusion, x, i, clip_denoised, cond, finite)
        x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * randn_like(x, generator) if i > 0 else out["mean"]
    finite.report()
    return x


@torch.no_grad()
def sample_ddim(denoise, diffusion, noise, *, eta=0.0, clip_denoised=False, generator=None, progress=True, **cond):
    """DDIM (Song et al., eq. 12) over the (respaced) process.

    Args:
        denoise: the model, denoise(x, t, **cond), t the process's integer timesteps.
        diffusion: a GaussianDiffusion (`create_diffusion("ddim50")` for 50 DDIM steps).
        noise: x_T, the starting Gaussian noise.
        eta: 0 is deterministic; 1 matches DDPM's posterior variance.
        clip_denoised: clip the predicted x_0 to [-1, 1].
        generator: a torch.Generator for the sampling noise (reproducible runs).
        progress: show a progress bar.
        **cond: passed to denoise on every call, e.g. y=labels.

    Returns:
        Tensor: the samples x_0.
    """
    if not eta >= 0:
        raise ValueError(f"DDIM's eta must be >= 0 (0: deterministic, 1: DDPM's posterior variance), got {eta}")
    x, finite = noise, FiniteCheck()
    for i in _steps(diffusion, progress, "DDIM"):
        t, out = _predict(denoise, diffusion, x, i, clip_denoised, cond, finite)
        pred_x0 = out["pred_x0"]
        eps = diffusion.predict_eps_from_x0(x, t, pred_x0)
        tables = diffusion.tables_on(t.device)
        alpha_bar, alpha_bar_prev = gather(tables.alphas_cumprod, t, x), gather(tables.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        x = pred_x0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if i > 0 and eta > 0:
            x = x + sigma * randn_like(x, generator)
    finite.report()
    return x
