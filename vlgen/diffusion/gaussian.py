"""ADM-style Gaussian diffusion (DDPM) as DiT trains and samples it.

Tables are float64 like the reference; values taken from them are cast to the data's dtype.
Timestep indices t run over this (possibly respaced) process; the model always sees the original
timesteps, `model_timesteps(t)`.
"""
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from vlgen.core.choices import check_choice
from vlgen.core.times import check_time_sampling, unit_times
from vlgen.core.reductions import mean_flat
from vlgen.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl
from vlgen.diffusion.schedules import beta_schedule, space_timesteps

PREDICTIONS = ("eps", "x0", "v")
DEFAULT_PREDICTION = "eps"  # DiT's
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


@dataclass(frozen=True)
class ScheduleTables:
    """The per-timestep tables of a (respaced) process: float64 on the CPU, or copies on a device."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    log_betas: torch.Tensor
    fixed_large_log_variance: torch.Tensor
    timestep_map: torch.Tensor

    def to(self, device):
        return ScheduleTables(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def gather(table, t, x):
    """table[t] broadcast to x's shape, in x's dtype."""
    return table[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1))).expand_as(x)


class GaussianDiffusion:
    """The DDPM training objective and the posterior its samplers step through.

    Implements the objective interface of vlgen.objectives (kind, default_sampler, sample_times,
    training_losses), as Transport does. `create_diffusion` builds one as DiT does.

    Args:
        betas: the noise schedule, a 1-D array in (0, 1].
        prediction: what the model predicts: "eps", "x0" or "v".
        variance: "learned_range" (the model predicts it), "fixed_small" (the posterior variance)
            or "fixed_large" (beta_t).
        timestep_map: the original step of each respaced step (the model sees those).
        time_sampling: how training steps are drawn: "uniform" or "logit-normal".
        logit_mean: mean of the logit-normal times.
        logit_std: standard deviation of the logit-normal times.
    """

    kind = "ddpm"
    default_sampler = "dpm-solver++"  # 20 steps: as good as 250 ancestral ones or better (README, Which sampler)

    def __init__(self, betas, prediction=DEFAULT_PREDICTION, variance="learned_range", timestep_map=None,
                 time_sampling="uniform", logit_mean=0.0, logit_std=1.0):
        check_choice("prediction", prediction, PREDICTIONS)
        check_time_sampling(time_sampling, logit_std)
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std
        check_choice("variance", variance, VARIANCES)
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.prediction, self.variance = prediction, variance
        self.num_timesteps = len(betas)
        self.timestep_map = list(range(len(betas))) if timestep_map is None else list(timestep_map)

        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # The posterior variance is 0 at t=0: its log is clipped to the value at t=1.
        posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        fixed_large = np.append(posterior_variance[1], betas[1:])
        tables = ScheduleTables(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
            log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=posterior_log_variance_clipped,
            posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
            log_betas=np.log(betas),
            fixed_large_log_variance=np.log(fixed_large),
            timestep_map=np.asarray(self.timestep_map, dtype=np.float64),
        )
        self.tables = ScheduleTables(**{f.name: torch.from_numpy(getattr(tables, f.name)) for f in fields(tables)})
        self._device_tables = {}

    # -- tables ---------------------------------------------------------------------------
    def tables_on(self, device):
        """The tables on a device (copied once per device)."""
        device = torch.device(device)
        if device not in self._device_tables:
            self._device_tables[device] = self.tables.to(device)
        return self._device_tables[device]

    def model_timesteps(self, t):
        """Original-process timesteps (as the model was trained on) of respaced indices t."""
        return self.tables_on(t.device).timestep_map[t].to(torch.long)

    # -- forward process ------------------------------------------------------------------
    def q_mean_variance(self, x0, t):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        tables = self.tables_on(t.device)
        mean = gather(tables.sqrt_alphas_cumprod, t, x0) * x0
        variance = gather(tables.sqrt_one_minus_alphas_cumprod, t, x0) ** 2
        return mean, variance, gather(tables.log_one_minus_alphas_cumprod, t, x0)

    def q_sample(self, x0, t, noise):
        tables = self.tables_on(t.device)
        return (gather(tables.sqrt_alphas_cumprod, t, x0) * x0
                + gather(tables.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        tables = self.tables_on(t.device)
        mean = gather(tables.posterior_mean_coef1, t, x_t) * x0 + gather(tables.posterior_mean_coef2, t, x_t) * x_t
        return mean, gather(tables.posterior_variance, t, x_t), gather(tables.posterior_log_variance_clipped, t, x_t)

    # -- model output -> distributions ----------------------------------------------------
    def split_output(self, model_output, x):
        """(prediction, variance values in [-1, 1] or None) from the model's output channels."""
        channels = x.shape[1]
        if self.variance == "learned_range":
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"learned_range variance needs {2 * channels} output channels (prediction + variance), "
                    f"got {model_output.shape[1]}: use a model with learn_sigma=True or a fixed variance"
                )
            return model_output[:, :channels], model_output[:, channels:]
        return model_output[:, :channels], None

    def predict_x0(self, prediction, x_t, t):
        tables = self.tables_on(t.device)
        if self.prediction == "eps":
            return (gather(tables.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                    - gather(tables.sqrt_recipm1_alphas_cumprod, t, x_t) * prediction)
        if self.prediction == "v":
            return (gather(tables.sqrt_alphas_cumprod, t, x_t) * x_t
                    - gather(tables.sqrt_one_minus_alphas_cumprod, t, x_t) * prediction)
        return prediction

    def predict_eps_from_x0(self, x_t, t, x0):
        tables = self.tables_on(t.device)
        return ((gather(tables.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
                / gather(tables.sqrt_recipm1_alphas_cumprod, t, x_t))

    def p_mean_variance(self, model_output, x_t, t, clip_denoised=False):
        """p(x_{t-1} | x_t) from a model output: dict(mean, variance, log_variance, pred_x0)."""
        tables = self.tables_on(t.device)
        prediction, variance_values = self.split_output(model_output, x_t)
        if variance_values is not None:
            min_log = gather(tables.posterior_log_variance_clipped, t, x_t)
            max_log = gather(tables.log_betas, t, x_t)
            frac = (variance_values + 1) / 2  # [-1, 1] spans [posterior variance, beta]
            log_variance = frac * max_log + (1 - frac) * min_log
        elif self.variance == "fixed_large":
            log_variance = gather(tables.fixed_large_log_variance, t, x_t)
        else:
            log_variance = gather(tables.posterior_log_variance_clipped, t, x_t)
        pred_x0 = self.predict_x0(prediction, x_t, t)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return dict(mean=mean, variance=torch.exp(log_variance), log_variance=log_variance, pred_x0=pred_x0)

    # -- training -------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output, x0, x_t, t):
        """Per-sample VLB term in bits per dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        the discretised decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        return torch.where(t == 0, mean_flat(nll) / math.log(2.0), kl)

    def training_target(self, x0, noise, t):
        if self.prediction == "eps":
            return noise
        if self.prediction == "v":
            tables = self.tables_on(t.device)
            return (gather(tables.sqrt_alphas_cumprod, t, x0) * noise
                    - gather(tables.sqrt_one_minus_alphas_cumprod, t, x0) * x0)
        return x0

    def training_losses(self, model, x0, t, noise=None, **model_kwargs):
        """dict(loss, mse, vb) per sample. loss = MSE of the prediction, plus (learned-range
        variance) the VLB term computed with the mean prediction detached, so the VLB trains only
        the variance channels (Nichol & Dhariwal's hybrid loss, as DiT)."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, self.model_timesteps(t), **model_kwargs)
        prediction, variance_values = self.split_output(model_output, x0)
        terms = {"mse": mean_flat((self.training_target(x0, noise, t) - prediction.float()) ** 2)}
        if variance_values is not None:
            frozen = torch.cat([prediction.detach(), variance_values], dim=1).float()
            terms["vb"] = self.vb_terms_bpd(frozen, x0.float(), x_t.float(), t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    def sample_times(self, batch_size, device, generator=None):
        """Training timesteps in [0, num_timesteps): uniform (DiT's), or logit-normal (u from
        vlgen.core.times, step floor(u * T))."""
        if self.time_sampling == "uniform":
            return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)
        gen_device = generator.device if generator is not None else device
        u = unit_times(batch_size, generator, gen_device, self.time_sampling, self.logit_mean, self.logit_std)
        return (u * self.num_timesteps).long().clamp_(max=self.num_timesteps - 1).to(device)


def create_diffusion(timestep_respacing="", noise_schedule="linear", diffusion_steps=1000,
                     prediction=DEFAULT_PREDICTION, learn_sigma=True, sigma_small=False, time_sampling="uniform",
                     logit_mean=0.0, logit_std=1.0):
    """DiT's create_diffusion: linear 1000-step schedule, learned-range sigma by default.

    Respacing keeps the alpha-bar values of the kept steps and recomputes the betas between them.

    Args:
        timestep_respacing: "" (all steps), "250", "ddim50" or comma-separated sections.
        noise_schedule: "linear" (DiT's) or "cosine".
        diffusion_steps: steps of the full process.
        prediction: what the model predicts: "eps" (DiT's), "x0" or "v".
        learn_sigma: the model predicts the variance too (learned range, trained with the VLB term).
        sigma_small: without learn_sigma, the posterior variance instead of beta_t.
        time_sampling: how training steps are drawn: "uniform" (DiT's) or "logit-normal".
        logit_mean: mean of the logit-normal times.
        logit_std: standard deviation of the logit-normal times.

    Returns:
        GaussianDiffusion: the objective and the process the DDPM samplers step through.
    """
    betas = beta_schedule(noise_schedule, diffusion_steps)
    variance = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
    kept = space_timesteps(diffusion_steps, timestep_respacing)
    alphas_cumprod = np.cumprod(1.0 - betas)
    kept_alphas = alphas_cumprod[kept]
    respaced_betas = 1.0 - kept_alphas / np.append(1.0, kept_alphas[:-1])
    return GaussianDiffusion(respaced_betas, prediction=prediction, variance=variance, timestep_map=kept,
                             time_sampling=time_sampling, logit_mean=logit_mean, logit_std=logit_std)
