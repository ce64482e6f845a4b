"""SiT interpolants: path coefficients, conversions against the Gaussian closed form, losses, options."""
import math

import pytest
import torch

from conftest import tiny_model
from vlgen.sampling.flow import sample_ode
from vlgen.transport import PATHS, Transport
from vlgen.transport.paths import expand_like

MU, STD = 0.5, 0.3  # Gaussian "data": every value ~ N(0.5, 0.3^2)


def gaussian_posterior(path, x, t):
    """Closed form for Gaussian data: (E[x1 | x_t], E[x0 | x_t], score) on the path."""
    t = expand_like(t, x)
    alpha, sigma = path.alpha(t)[0], path.sigma(t)[0]
    variance = alpha**2 * STD**2 + sigma**2
    residual = x - alpha * MU
    return MU + alpha * STD**2 / variance * residual, sigma / variance * residual, -residual / variance


def gaussian_velocity(path, x, t):
    data, noise, _ = gaussian_posterior(path, x, t)
    t = expand_like(t, x)
    return path.alpha(t)[1] * data + path.sigma(t)[1] * noise


def times(n=7):
    return torch.linspace(0.05, 0.95, n, dtype=torch.float64)


@pytest.mark.parametrize("name", list(PATHS))
def test_coefficients_are_consistent_with_their_derivatives(name):
    path = PATHS[name]()
    t = times().requires_grad_(True)
    alpha, d_alpha = path.alpha(t)
    sigma, d_sigma = path.sigma(t)
    assert torch.allclose(torch.autograd.grad(alpha.sum(), t, retain_graph=True)[0], d_alpha)
    assert torch.allclose(torch.autograd.grad(sigma.sum(), t)[0], d_sigma)
    assert torch.allclose(path.d_log_alpha(t), d_alpha / alpha)
    assert torch.allclose(path.score_coefficient(t), d_alpha / alpha * sigma**2 - sigma * d_sigma)
    ends = torch.tensor([1.0], dtype=torch.float64)
    assert path.alpha(ends)[0].item() == pytest.approx(1.0) and path.sigma(ends)[0].item() == pytest.approx(0.0)
    if name != "VP":  # VP reaches pure noise only as t -> -inf; at t = 0, alpha = exp(-5.0)
        start = torch.tensor([0.0], dtype=torch.float64)
        assert path.alpha(start)[0].item() == 0.0 and path.sigma(start)[0].item() == 1.0
    if name in ("GVP", "VP"):
        assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t))


@pytest.mark.parametrize("name", list(PATHS))
def test_plan_velocity_is_the_time_derivative_of_the_interpolant(name):
    path = PATHS[name]()
    generator = torch.Generator().manual_seed(0)
    noise, data = torch.randn(2, 7, 3, dtype=torch.float64, generator=generator)
    t = times().requires_grad_(True)
    x_t, u_t = path.plan(expand_like(t, noise), noise, data)
    jacobian = torch.autograd.functional.jacobian(lambda s: path.plan(expand_like(s, noise), noise, data)[0].sum(1), t)
    assert torch.allclose(jacobian.diagonal(), u_t.sum(1))


@pytest.mark.parametrize("name", list(PATHS))
def test_conversions_match_the_gaussian_closed_form(name):
    path = PATHS[name]()
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = times()
    _, noise, score = gaussian_posterior(path, x, t)
    velocity = gaussian_velocity(path, x, t)
    t_x = expand_like(t, x)
    assert torch.allclose(path.velocity_from_score(score, x, t_x), velocity)
    assert torch.allclose(path.score_from_velocity(velocity, x, t_x), score)
    assert torch.allclose(path.noise_from_velocity(velocity, x, t_x), noise)
    assert torch.allclose(path.score_from_noise(noise, t_x), score)
    assert torch.allclose(path.noise_from_score(score, t_x), noise)


@pytest.mark.parametrize("name", list(PATHS))
def test_transport_conversions_agree_for_every_prediction_type(name):
    """One point (x, t) described by each of the three predictions: every transport recovers the
    same velocity, score and noise from its own kind of output."""
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = times()
    outputs = {}
    for prediction in ("velocity", "score", "noise"):
        transport = Transport(name, prediction)
        _, noise, score = gaussian_posterior(transport.path, x, t)
        outputs[prediction] = (transport, {"velocity": gaussian_velocity(transport.path, x, t), "score": score, "noise": noise})
    for transport, truth in outputs.values():
        output = truth[transport.prediction]
        assert torch.allclose(transport.velocity(output, x, t), truth["velocity"])
        assert torch.allclose(transport.score(output, x, t), truth["score"])
        assert torch.allclose(transport.noise(output, x, t), truth["noise"])


def test_losses_equal_their_closed_forms_on_the_linear_path():
    """Zero model output on the Linear path: the velocity loss is E|x1 - x0|^2, the noise loss
    weight(t) E|x0|^2 with likelihood weight 1 / (t (1 - t)) and velocity weight 1 / t^2."""
    generator = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(2, 6, 2, 3, 3, generator=generator, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)

    def zero_model(x, t):
        return torch.zeros_like(x)

    def loss(**options):
        return Transport("Linear", **options).training_losses(zero_model, x1, t=t, noise=x0)["loss"].double()

    mean_square = lambda v: v.pow(2).flatten(1).mean(1)
    assert torch.allclose(loss(prediction="velocity"), mean_square(x1 - x0), rtol=1e-6)
    assert torch.allclose(loss(prediction="noise"), mean_square(x0), rtol=1e-6)
    assert torch.allclose(loss(prediction="noise", loss_weight="likelihood"), mean_square(x0) / (t * (1 - t)), rtol=1e-6)
    assert torch.allclose(loss(prediction="score", loss_weight="velocity"), mean_square(x0) / t**2, rtol=1e-6)


@pytest.mark.parametrize(
    "path, prediction, options, expected",
    [  # SiT's check_interval, read from the reference code
        ("Linear", "velocity", dict(), (0.0, 1.0)),
        ("Linear", "noise", dict(), (1e-3, 1 - 1e-3)),
        ("GVP", "velocity", dict(sde=True, diffusion_form="sigma", last_step_size=0.04), (0.0, 0.96)),
        ("Linear", "velocity", dict(sde=True, diffusion_form="SBDM", last_step_size=0.04), (0.0, 0.96)),
        ("VP", "velocity", dict(), (0.0, 1 - 1e-3)),
        ("VP", "score", dict(sde=True, last_step_size=0.04), (0.0, 0.96)),
        ("VP", "velocity", dict(training=True), (0.0, 1 - 1e-5)),
        ("Linear", "score", dict(reverse=True), (1 - 1e-3, 1e-3)),
    ],
)
def test_time_intervals_follow_sit(path, prediction, options, expected):
    assert Transport(path, prediction).interval(**options) == pytest.approx(expected)


def test_default_eps_and_explicit_values():
    assert (Transport("Linear").train_eps, Transport("Linear").sample_eps) == (0.0, 0.0)
    assert (Transport("GVP", "noise").train_eps, Transport("GVP", "noise").sample_eps) == (1e-3, 1e-3)
    assert (Transport("VP").train_eps, Transport("VP").sample_eps) == (1e-5, 1e-3)
    assert Transport("Linear", sample_eps=0.01).interval(sde=True, last_step_size=0.0) == pytest.approx((0.01, 0.99))


def test_training_times_uniform_and_logit_normal():
    generator = torch.Generator().manual_seed(0)
    uniform = Transport("Linear", "noise").sample_times(20000, "cpu", generator)
    assert uniform.min() >= 1e-3 and uniform.max() <= 1 - 1e-3
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert uniform.std().item() == pytest.approx(1 / math.sqrt(12), rel=0.02)
    logit = Transport(time_sampling="logit-normal", logit_mean=0.5, logit_std=1.0).sample_times(20000, "cpu", generator)
    z = torch.logit(logit.double())
    assert z.mean().item() == pytest.approx(0.5, abs=0.03)
    assert z.std().item() == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(path="Cosine"), "unknown path"),
        (dict(prediction="x0"), "unknown prediction"),
        (dict(prediction="velocity", loss_weight="likelihood"), "loss_weight applies to score and noise"),
        (dict(prediction="noise", loss_weight="snr"), "unknown loss_weight"),
        (dict(train_eps=-0.1), "train_eps must be in"),
        (dict(sample_eps=0.5), "sample_eps must be in"),
        (dict(time_sampling="beta"), "unknown time_sampling"),
        (dict(time_sampling="logit-normal", logit_std=0.0), "logit_std must be positive"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        Transport(**options)


def test_learned_sigma_model_output_is_rejected():
    model = tiny_model("DiT-LLaMA-S/2")  # learn_sigma without discard_sigma: 2C output channels
    with pytest.raises(ValueError, match="as many output channels as input channels"):
        Transport().training_losses(model, torch.randn(2, 4, 16, 16), y=torch.tensor([0, 1]))


@pytest.mark.slow
def test_tiny_model_learns_two_patterns_and_samples_them():
    """Two classes of fixed 4x8x8 patterns, velocity on the Linear path: 300 AdamW steps cut the
    loss by >= 5x (measured 11.5x); 20 Euler steps then draw each class's pattern (MSE measured
    0.008, bound 0.05, against a pattern power of 0.34)."""
    torch.manual_seed(0)
    patterns = torch.stack([torch.linspace(-1, 1, 256).view(4, 8, 8), torch.linspace(1, -1, 256).view(4, 8, 8).flip(-1)])
    model = tiny_model("SiT-LLaMA-S/2", randomize=False, sample_size=8, hidden_size=64, num_heads=4, num_classes=2).train()
    transport = Transport("Linear", "velocity")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    losses = []
    for _ in range(300):
        y = torch.randint(0, 2, (32,))
        loss = transport.training_losses(model, patterns[y], y=y)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < first / 5, (first, last)

    y = torch.tensor([0, 1, 0, 1])
    samples = sample_ode(model.eval(), transport, torch.randn(4, 4, 8, 8), method="euler", num_steps=20, progress=False, y=y)
    assert ((samples - patterns[y]) ** 2).mean().item() < 0.05
