"""Interpolant paths of SiT: x_t = alpha_t * x1 + sigma_t * x0.

Time runs as in SiT: t = 0 is noise (x0 ~ N(0, I)), t = 1 is data (x1). Every function takes t
already broadcast against x (see `expand_like`) and returns tensors in t's dtype.

The conversions between what a model can predict follow from x_t = alpha x1 + sigma x0 and the
probability-flow velocity v = alpha' E[x1|x_t] + sigma' E[x0|x_t]:
  score s = -E[x0|x_t] / sigma,   noise = E[x0|x_t] = -sigma s,
  v = (alpha'/alpha) x + (alpha'/alpha sigma^2 - sigma sigma') s.
"""
import math

import torch

from vlgen.core.choices import check_choice


def expand_like(t, x):
    """(N,) times -> (N, 1, ..., 1), broadcastable against x (N, ...)."""
    return t.view(t.shape[0], *([1] * (x.ndim - 1)))


class InterpolantPath:
    """A path is its two coefficient functions; everything else derives from them."""

    name = None

    def alpha(self, t):
        """(alpha_t, d alpha_t / dt): the data coefficient."""
        raise NotImplementedError

    def sigma(self, t):
        """(sigma_t, d sigma_t / dt): the noise coefficient."""
        raise NotImplementedError

    def d_log_alpha(self, t):
        """alpha'/alpha, written per path in a numerically stable form."""
        raise NotImplementedError

    # -- training pairs -------------------------------------------------------------------
    def plan(self, t, noise, data):
        """(x_t, u_t): the interpolant and its conditional velocity d x_t / dt."""
        alpha, d_alpha = self.alpha(t)
        sigma, d_sigma = self.sigma(t)
        return alpha * data + sigma * noise, d_alpha * data + d_sigma * noise

    def score_coefficient(self, t):
        """(alpha'/alpha) sigma^2 - sigma sigma': the factor of the score in the velocity. It is
        also SiT's "SBDM" diffusion coefficient and enters its loss weights."""
        sigma, d_sigma = self.sigma(t)
        return self.d_log_alpha(t) * sigma**2 - sigma * d_sigma

    def diffusion(self, t, form, norm=1.0):
        """SiT's diffusion coefficient w_t of the reverse SDE (noise scale sqrt(2 w_t))."""
        check_choice("diffusion form", form, DIFFUSION_FORMS)
        if form == "constant":
            return torch.full_like(t, norm)
        if form == "SBDM":
            return norm * self.score_coefficient(t)
        if form == "sigma":
            return norm * self.sigma(t)[0]
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":
            return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
        return norm * torch.sin(math.pi * t) ** 2  # "increasing-decreasing"

    # -- conversions between predictions --------------------------------------------------
    def velocity_from_score(self, score, x, t):
        return self.score_coefficient(t) * score + self.d_log_alpha(t) * x

    def score_from_velocity(self, velocity, x, t):
        alpha, d_alpha = self.alpha(t)
        sigma, d_sigma = self.sigma(t)
        inverse_ratio = alpha / d_alpha
        return (inverse_ratio * velocity - x) / (sigma**2 - inverse_ratio * d_sigma * sigma)

    def noise_from_velocity(self, velocity, x, t):
        alpha, d_alpha = self.alpha(t)
        sigma, d_sigma = self.sigma(t)
        inverse_ratio = alpha / d_alpha
        return (inverse_ratio * velocity - x) / (inverse_ratio * d_sigma - sigma)

    def score_from_noise(self, noise, t):
        return -noise / self.sigma(t)[0]

    def noise_from_score(self, score, t):
        return -self.sigma(t)[0] * score


class LinearPath(InterpolantPath):
    """alpha_t = t, sigma_t = 1 - t (rectified flow / SiT's default)."""

    name = "Linear"

    def alpha(self, t):
        return t, torch.ones_like(t)

    def sigma(self, t):
        return 1 - t, -torch.ones_like(t)

    def d_log_alpha(self, t):
        return 1 / t


class GVPPath(InterpolantPath):
    """Generalised variance preserving: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    name = "GVP"

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def d_log_alpha(self, t):
        return math.pi / (2 * torch.tan(t * math.pi / 2))


class VPPath(InterpolantPath):
    """The VP SDE of score-based diffusion in SiT's time (t = 1 is data): linear beta from
    sigma_min = 0.1 at the data end to sigma_max = 20 at the noise end,
    alpha_t = exp(-1/4 (1-t)^2 (sigma_max - sigma_min) - 1/2 (1-t) sigma_min), sigma_t = sqrt(1 - alpha_t^2)."""

    name = "VP"

    def __init__(self, sigma_min=0.1, sigma_max=20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def _log_mean(self, t):
        return -0.25 * (1 - t) ** 2 * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

    def d_log_alpha(self, t):
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def alpha(self, t):
        alpha = torch.exp(self._log_mean(t))
        return alpha, alpha * self.d_log_alpha(t)

    def sigma(self, t):
        alpha_squared = torch.exp(2 * self._log_mean(t))
        sigma = torch.sqrt(1 - alpha_squared)
        return sigma, -alpha_squared * self.d_log_alpha(t) / sigma

    def score_coefficient(self, t):
        return self.d_log_alpha(t)  # sigma^2 + alpha^2 = 1 reduces the general form to beta_t / 2


PATHS = {path.name: path for path in (LinearPath, GVPPath, VPPath)}
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
