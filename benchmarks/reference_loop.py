"""The reference loop that run_all.py compares vlgen with: DiT's training step and p_sample_loop
written plainly, as the official DiT/ADM code runs them around the same model. The schedule is
kept as float64 numpy arrays gathered and broadcast on every use, the optimizer is torch's AdamW
with foreach and no fusion, the EMA is updated parameter by parameter in Python, and guidance
doubles the batch outside the model as DiT's sample.py does. The model and the math are the same
as vlgen's (check_same_loss verifies it), so a time ratio measures the loop around the model."""
import math
from collections import OrderedDict

import numpy as np
import torch

from vlgen.core.reductions import mean_flat
from vlgen.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl


def _extract(array, timesteps, shape):
    """array[timesteps] as float32, broadcast to shape (ADM's _extract_into_tensor)."""
    values = torch.from_numpy(array).to(device=timesteps.device)[timesteps].float()
    while values.ndim < len(shape):
        values = values[..., None]
    return values + torch.zeros(shape, device=timesteps.device)


class ReferenceDiffusion:
    """ADM's GaussianDiffusion reduced to what DiT uses: eps prediction, learned-range variance,
    the MSE + VLB loss, ancestral sampling. betas and timestep_map: numpy arrays (respaced ones
    give the respaced process)."""

    def __init__(self, betas, timestep_map):
        self.betas = np.asarray(betas, dtype=np.float64)
        self.timestep_map = torch.as_tensor(np.asarray(timestep_map), dtype=torch.long)
        self.num_timesteps = len(self.betas)
        alphas_cumprod = np.cumprod(1.0 - self.betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod - 1)
        posterior_variance = self.betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - alphas_cumprod)

    def q_sample(self, x0, t, noise):
        return (_extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)

    def q_posterior(self, x0, x_t, t):
        mean = (_extract(self.posterior_mean_coef1, t, x_t.shape) * x0
                + _extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return mean, _extract(self.posterior_log_variance_clipped, t, x_t.shape)

    def p_mean_variance(self, model_output, x, t):
        eps, variance_values = torch.split(model_output, x.shape[1], dim=1)
        min_log = _extract(self.posterior_log_variance_clipped, t, x.shape)
        max_log = _extract(np.log(self.betas), t, x.shape)
        frac = (variance_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_x0 = (_extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x
                   - _extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps)
        mean, _ = self.q_posterior(pred_x0, x, t)
        return mean, log_variance

    def training_losses(self, model, x0, t, noise, **model_kwargs):
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, self.timestep_map.to(t.device)[t], **model_kwargs)
        eps, variance_values = torch.split(model_output, x0.shape[1], dim=1)
        frozen = torch.cat([eps.detach(), variance_values], dim=1).float()
        true_mean, true_log_variance = self.q_posterior(x0, x_t, t)
        mean, log_variance = self.p_mean_variance(frozen, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / math.log(2.0)
        nll = mean_flat(-discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return mean_flat((noise - eps.float()) ** 2) + vb

    @torch.no_grad()
    def p_sample_loop(self, model, noise, **model_kwargs):
        x = noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.tensor([i] * x.shape[0], device=x.device)
            mean, log_variance = self.p_mean_variance(model(x, self.timestep_map.to(x.device)[t], **model_kwargs), x, t)
            nonzero_mask = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
            x = mean + nonzero_mask * torch.exp(0.5 * log_variance) * torch.randn_like(x)
        return x


def reference_diffusion(diffusion):
    """The reference process with the schedule of a vlgen GaussianDiffusion."""
    return ReferenceDiffusion(diffusion.tables.betas.numpy(), diffusion.timestep_map)


def forward_with_cfg(model, scale, channels):
    """DiT's forward_with_cfg: the batch holds the conditional half then the unconditional one."""
    def guided(x, t, y):
        half = x[: len(x) // 2]
        output = model(torch.cat([half, half]), t, y)
        eps, rest = output[:, :channels], output[:, channels:]
        cond, uncond = torch.split(eps, len(eps) // 2)
        half_eps = uncond + scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)

    return guided


def reference_training_step(model, diffusion, x, y, lr=1e-4, decay=0.9999):
    """step(): one DiT training step (hybrid loss, backward, foreach AdamW, Python-loop EMA)."""
    ema = OrderedDict((name, param.detach().clone()) for name, param in model.named_parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0, foreach=True, fused=False)
    reference = reference_diffusion(diffusion)

    def step():
        t = torch.randint(0, reference.num_timesteps, (x.shape[0],), device=x.device)
        loss = reference.training_losses(model, x, t, torch.randn_like(x), y=y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, param in model.named_parameters():
                ema[name].mul_(decay).add_(param.data, alpha=1 - decay)

    return step


def check_same_loss(model, diffusion, x, y, count=32):
    """The largest relative difference between vlgen's and the reference's per-sample losses on the
    same noise, at `count` timesteps spread over the process (0 and the last included), with label
    dropout off."""
    reference = reference_diffusion(diffusion)
    timesteps = torch.linspace(0, diffusion.num_timesteps - 1, count, device=x.device).round().long()
    was_training = model.training
    model.eval()
    largest = 0.0
    with torch.no_grad():
        for t in timesteps.split(len(x)):
            noise = torch.randn_like(x[: len(t)])
            ours = diffusion.training_losses(model, x[: len(t)], t, noise=noise, y=y[: len(t)])["loss"]
            theirs = reference.training_losses(model, x[: len(t)], t, noise, y=y[: len(t)])
            largest = max(largest, float((ours - theirs).abs().max() / theirs.abs().max()))
    model.train(was_training)
    return largest
