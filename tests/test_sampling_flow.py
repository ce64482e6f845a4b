"""ODE / SDE samplers and ODE likelihoods with the exact Gaussian fields; CFG; failure modes."""
import math

import pytest
import torch

from conftest import tiny_model
from vlgen.sampling import classifier_free_guidance
from vlgen.sampling.flow import log_likelihood, sample_ode, sample_sde
from test_transport import MU, STD, gaussian_posterior, gaussian_velocity
from vlgen.transport import PATHS, Transport
from vlgen.transport.paths import expand_like


def oracle(transport):
    """The exact model output of this transport's prediction type for Gaussian data."""

    def denoise(x, t, **_):
        _, noise, score = gaussian_posterior(transport.path, x, t)
        return {"velocity": gaussian_velocity(transport.path, x, t), "score": score, "noise": noise}[transport.prediction]

    return denoise


def prior_noise(n=4000, seed=0):
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gaussian_log_density(x):
    return (-0.5 * ((x - MU) / STD) ** 2 - math.log(STD) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def marginal(transport, t):
    """Mean and std of x_t for Gaussian data."""
    t = torch.tensor(t, dtype=torch.float64)
    alpha, sigma = transport.path.alpha(t)[0], transport.path.sigma(t)[0]
    return (alpha * MU).item(), math.sqrt(alpha**2 * STD**2 + sigma**2)


# 64,000 draws: sampling error ~0.001 on the mean, ~0.3% on the std; the rest is discretisation.
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("prediction", ["velocity", "score", "noise"])
@pytest.mark.parametrize("method, num_steps", [("dopri5", 0), ("heun", 50)])
def test_ode_maps_noise_to_the_data_distribution(path, prediction, method, num_steps):
    transport = Transport(path, prediction)
    options = dict(rtol=1e-5) if method == "dopri5" else dict(num_steps=num_steps)
    x = sample_ode(oracle(transport), transport, prior_noise(), method=method, progress=False, **options)
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.02)


def test_reverse_ode_inverts_the_forward_ode():
    transport = Transport("GVP")
    data = MU + STD * prior_noise(200, seed=3)
    latents = sample_ode(oracle(transport), transport, data, reverse=True, rtol=1e-7, atol=1e-9, progress=False)
    assert latents.std().item() == pytest.approx(1.0, rel=0.05)
    back = sample_ode(oracle(transport), transport, latents, rtol=1e-7, atol=1e-9, progress=False)
    assert torch.allclose(back, data, atol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("method", ["euler", pytest.param("heun", marks=pytest.mark.slow)])
@pytest.mark.parametrize("diffusion_form", ["sigma", "SBDM"])
def test_sde_without_last_step_reaches_the_marginal_at_its_end_time(path, method, diffusion_form):
    transport = Transport(path, sample_eps=1e-3)
    x = sample_sde(oracle(transport), transport, prior_noise(), method=method, diffusion_form=diffusion_form,
                   last_step=None, num_steps=250, generator=torch.Generator().manual_seed(1), progress=False)
    mean, std = marginal(transport, transport.interval(sde=True, diffusion_form=diffusion_form)[1])
    assert x.mean().item() == pytest.approx(mean, abs=0.01)
    assert x.std().item() == pytest.approx(std, rel=0.02)


def test_sde_tweedie_last_step_is_the_posterior_mean():
    """From x_t ~ N(alpha mu, V) the last step returns E[x1 | x_t]: mean mu, std alpha s^2 / sqrt(V)."""
    transport = Transport("Linear")
    x = sample_sde(oracle(transport), transport, prior_noise(), last_step="tweedie", last_step_size=0.04,
                   generator=torch.Generator().manual_seed(1), progress=False)
    alpha = 0.96
    variance = alpha**2 * STD**2 + (1 - alpha) ** 2
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(alpha * STD**2 / math.sqrt(variance), rel=0.02)


@pytest.mark.parametrize("last_step", ["mean", "euler"])
def test_sde_default_last_steps_stay_near_the_data(last_step):
    """SiT's default: the sigma diffusion, 250 points to t = 0.96, a noise-free last step of 0.04."""
    transport = Transport("Linear")
    x = sample_sde(oracle(transport), transport, prior_noise(), last_step=last_step,
                   generator=torch.Generator().manual_seed(1), progress=False)
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.05)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sde_steps_without_noise_are_torchdiffeq_ode_steps(method):
    """With zero diffusion, num_steps points of the SDE sampler are num_steps - 1 steps of the same
    method in torchdiffeq over the same interval (noise prediction: [1e-3, 1 - 1e-3] for both)."""
    model = tiny_model("SiT-LLaMA-S/2")
    transport = Transport(prediction="noise")
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 4])
    sde = sample_sde(model, transport, noise, method=method, diffusion_form="constant", diffusion_norm=0.0,
                     last_step=None, num_steps=6, progress=False, y=y)
    ode = sample_ode(model, transport, noise, method=method, num_steps=5, progress=False, y=y)
    assert torch.allclose(sde, ode, atol=1e-5)


def test_sde_is_reproducible_with_a_generator():
    transport = Transport("Linear")
    run = lambda seed: sample_sde(oracle(transport), transport, prior_noise(8), num_steps=20,
                                  generator=torch.Generator().manual_seed(seed), progress=False)
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize(
    "path, prediction, tolerance",
    # the velocity ODE spans all of [0, 1]; score/noise predictions and VP stop sample_eps = 1e-3
    # short of the ends, which costs a few hundredths of a nat over 16 dimensions
    [("Linear", "velocity", 1e-4), ("GVP", "velocity", 1e-4), ("Linear", "noise", 0.05), ("VP", "velocity", 0.05)],
)
def test_likelihood_matches_the_gaussian_log_density(path, prediction, tolerance):
    transport = Transport(path, prediction)
    data = MU + STD * prior_noise(300, seed=3)
    log_p, z = log_likelihood(oracle(transport), transport, data, rtol=1e-5, atol=1e-6, progress=False)
    assert (log_p - gaussian_log_density(data)).abs().max().item() < tolerance
    assert z.std().item() == pytest.approx(1.0, rel=0.05)


def test_hutchinson_divergence_is_unbiased_for_a_non_diagonal_field():
    """v(x) = A x with A full: x(1) = e^A x(0), so log p_1(x) = log N(e^-A x) - tr A. A single
    Rademacher probe estimates tr A with error; over many samples the errors average out."""
    a = torch.tensor([[0.2, 0.9], [-0.7, 0.1]], dtype=torch.float64)
    field = lambda x, t, **_: (x.flatten(1) @ a.T).view_as(x)
    data = torch.randn(4000, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_p, z = log_likelihood(field, Transport("Linear"), data, rtol=1e-8, atol=1e-10,
                              generator=torch.Generator().manual_seed(1), progress=False)
    exact_z = data.flatten(1) @ torch.linalg.matrix_exp(-a).T
    assert torch.allclose(z.flatten(1), exact_z, atol=1e-6)
    exact = -0.5 * (exact_z**2 + math.log(2 * math.pi)).sum(1) - torch.trace(a)
    error = log_p - exact
    assert error.abs().max().item() > 0.1  # one probe per sample is noisy ...
    assert abs(error.mean().item()) < 4 * error.std().item() / math.sqrt(len(error))  # ... but unbiased


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.batch_sizes = model, []

    def forward(self, x, t, y):
        self.batch_sizes.append(x.shape[0])
        return self.model(x, t, y)


def test_guidance_is_one_batched_forward_and_scale_one_is_the_conditional_model():
    model = CountingModel(tiny_model("SiT-LLaMA-S/2"))
    transport = Transport()
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2, 3])
    guided = classifier_free_guidance(model, 4.0, null_label=10, guided_channels=4)
    sample_ode(guided, transport, noise, method="euler", num_steps=4, progress=False, y=y)
    assert model.batch_sizes == [6] * 4
    conditional = sample_ode(model, transport, noise, method="euler", num_steps=4, progress=False, y=y)
    scale_one = sample_ode(classifier_free_guidance(model, 1.0, 10, 4), transport, noise, method="euler",
                           num_steps=4, progress=False, y=y)
    assert torch.equal(conditional, scale_one)


def test_real_model_through_every_sampler():
    model = tiny_model("SiT-LLaMA-S/2")
    transport = Transport()
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    for x in (
        sample_ode(model, transport, noise, method="rk4", num_steps=3, progress=False, y=y),
        sample_sde(model, transport, noise, method="heun", num_steps=4, generator=torch.Generator().manual_seed(0),
                   progress=False, y=y),
    ):
        assert x.shape == noise.shape and torch.isfinite(x).all()
    log_p, z = log_likelihood(model, transport, noise, method="euler", num_steps=3, progress=False, y=y)
    assert log_p.shape == (2,) and torch.isfinite(log_p).all() and z.shape == noise.shape


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d, tr, x: sample_ode(d, tr, x, method="dopri6"), "unknown ODE solver 'dopri6'"),
        (lambda d, tr, x: sample_ode(d, tr, x, method="euler", num_steps=0), "num_steps must be an integer >= 1"),
        (lambda d, tr, x: log_likelihood(d, tr, x, method="leapfrog"), "unknown ODE solver"),
        (lambda d, tr, x: sample_sde(d, tr, x, method="milstein"), "unknown SDE method"),
        (lambda d, tr, x: sample_sde(d, tr, x, diffusion_form="cubic"), "unknown diffusion form"),
        (lambda d, tr, x: sample_sde(d, tr, x, last_step="median"), "unknown last step"),
        (lambda d, tr, x: sample_sde(d, tr, x, last_step_size=1.5), "last_step_size must be in"),
        (lambda d, tr, x: sample_sde(d, tr, x, num_steps=1), "num_steps must be an integer >= 2"),
        (lambda d, tr, x: sample_sde(d, tr, x, diffusion_form="SBDM"), "set the transport's sample_eps > 0"),
        (lambda d, tr, x: sample_sde(d, tr, x, method="heun", last_step=None), "score at its end time t=1"),
    ],
)
def test_bad_sampler_options_are_clear_errors(call, message):
    transport = Transport()
    with pytest.raises(ValueError, match=message):
        call(oracle(transport), transport, prior_noise(2))


def test_non_finite_model_output_names_the_time():
    broken = lambda x, t, **_: torch.full_like(x, float("nan"))
    with pytest.raises(FloatingPointError, match="t=0.0000"):
        sample_ode(broken, Transport(), prior_noise(2), method="euler", num_steps=2, progress=False)


def test_learned_sigma_output_is_rejected_by_the_samplers():
    model = tiny_model("DiT-LLaMA-S/2")
    with pytest.raises(ValueError, match="as many output channels"):
        sample_ode(model, Transport(), torch.randn(1, 4, 16, 16), method="euler", num_steps=2, progress=False,
                   y=torch.tensor([0]))


def test_expand_like_broadcasts_times_over_samples():
    assert expand_like(torch.zeros(5), torch.zeros(5, 3, 2, 2)).shape == (5, 1, 1, 1)
