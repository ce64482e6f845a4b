"""Closed forms of the Gaussian diffusion (ADM / DiT conventions)."""
import math

import numpy as np
import pytest
import torch

from vlgen.diffusion import beta_schedule, create_diffusion, space_timesteps
from vlgen.diffusion.likelihood import normal_kl


def test_linear_schedule_is_dits():
    betas = beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02) and len(betas) == 1000
    cosine = beta_schedule("cosine", 1000)
    assert cosine.max() <= 0.999 and np.all(np.diff(cosine) >= 0)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule("sigmoid")


def test_q_sample_moments():
    diffusion = create_diffusion()
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    t = torch.full((20000,), 400)
    x_t = diffusion.q_sample(x0, t, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    alpha_bar = float(np.prod(1 - beta_schedule("linear")[:401]))
    assert x_t.mean().item() == pytest.approx(math.sqrt(alpha_bar) * 0.7, abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - alpha_bar, rel=0.03)
    mean, var, log_var = diffusion.q_mean_variance(x0[:1], t[:1])
    assert mean.item() == pytest.approx(math.sqrt(alpha_bar) * 0.7) and var.item() == pytest.approx(1 - alpha_bar)
    assert log_var.item() == pytest.approx(math.log(1 - alpha_bar))


@pytest.mark.parametrize("t_index", [1, 17, 500, 999])
def test_posterior_matches_bayes_rule(t_index):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): a product of two Gaussians."""
    diffusion = create_diffusion()
    betas = beta_schedule("linear")
    beta, alpha_bar_prev = betas[t_index], float(np.prod(1 - betas[:t_index]))
    x0, x_t = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-1.2]], dtype=torch.float64)
    precision = 1 / (1 - alpha_bar_prev) + (1 - beta) / beta
    mean = (math.sqrt(alpha_bar_prev) * 0.3 / (1 - alpha_bar_prev) + math.sqrt(1 - beta) * -1.2 / beta) / precision
    got_mean, got_var, _ = diffusion.q_posterior_mean_variance(x0, x_t, torch.tensor([t_index]))
    assert got_mean.item() == pytest.approx(mean, rel=1e-9)
    assert got_var.item() == pytest.approx(1 / precision, rel=1e-9)


def test_normal_kl_closed_form():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-0.5), torch.tensor(-0.2), torch.tensor(0.4)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(expected.item(), rel=1e-6)


def test_vlb_of_a_gaussian_case():
    """With the exact noise as the eps prediction, p's mean is the true posterior mean: the VLB
    term is 0 at variance value -1 (posterior variance) and the closed-form KL at +1 (beta)."""
    diffusion = create_diffusion()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 3, 3, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 2, 3, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([5, 100, 600, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    at_posterior = diffusion.vb_terms_bpd(torch.cat([noise, -torch.ones_like(noise)], 1), x0, x_t, t)
    assert torch.allclose(at_posterior, torch.zeros(4, dtype=torch.float64), atol=1e-9)
    at_beta = diffusion.vb_terms_bpd(torch.cat([noise, torch.ones_like(noise)], 1), x0, x_t, t)
    betas = torch.from_numpy(beta_schedule("linear"))[t]
    posterior = diffusion.tables.posterior_variance[t]
    expected = 0.5 * (-1 + torch.log(betas / posterior) + posterior / betas) / math.log(2)
    assert torch.allclose(at_beta, expected, rtol=1e-9)


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean():
    diffusion = create_diffusion()
    x0 = torch.randn(3, 2, 4, 4)
    prediction = torch.randn(3, 2, 4, 4, requires_grad=True)
    variance = torch.zeros(3, 2, 4, 4, requires_grad=True)
    model = lambda x, t: torch.cat([prediction, variance], 1)  # noqa: E731
    terms = diffusion.training_losses(model, x0, torch.tensor([3, 300, 900]), noise=torch.randn(3, 2, 4, 4))
    terms["vb"].sum().backward(retain_graph=True)
    assert prediction.grad is None or not prediction.grad.any()  # the VLB does not train the mean
    assert variance.grad.abs().sum() > 0
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    assert terms["vb"].min() > 0


def test_v_and_x0_predictions_recover_x0():
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 2, 8, 3, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([10, 700])
    for prediction in ("eps", "v", "x0"):
        diffusion = create_diffusion(prediction=prediction, learn_sigma=False)
        x_t = diffusion.q_sample(x0, t, noise)
        target = diffusion.training_target(x0, noise, t)
        assert torch.allclose(diffusion.predict_x0(target, x_t, t), x0, atol=1e-9), prediction


def test_respacing_keeps_alpha_bar_of_kept_steps():
    full = create_diffusion("")
    for spacing in ("250", "ddim50", "10,15,20", "7"):
        respaced = create_diffusion(spacing)
        kept = torch.tensor(respaced.timestep_map)
        assert torch.allclose(respaced.tables.alphas_cumprod, full.tables.alphas_cumprod[kept], rtol=1e-12)
        assert respaced.model_timesteps(torch.arange(respaced.num_timesteps)).tolist() == respaced.timestep_map
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert len(space_timesteps(300, "10,15,20")) == 45
    assert space_timesteps(1000, "250")[:3] == [0, 4, 8] and space_timesteps(1000, "250")[-1] == 999


@pytest.mark.parametrize("spacing, message", [("abc", "is not 'N'"), ("2000", "cannot divide"), ("ddim999", "integer stride")])
def test_bad_respacing_is_a_clear_error(spacing, message):
    with pytest.raises(ValueError, match=message):
        space_timesteps(1000, spacing)


def test_learned_range_needs_variance_channels():
    diffusion = create_diffusion()
    with pytest.raises(ValueError, match="learned_range variance needs 8 output channels"):
        diffusion.p_mean_variance(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([3]))
