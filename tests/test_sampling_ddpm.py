"""DDPM / DDIM samplers: oracle Gaussian data, diffusers equivalence, CFG, failure modes, learning."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from conftest import tiny_model
from vlgen.sampling import classifier_free_guidance, sample_ddim, sample_ddpm
from vlgen.diffusion import create_diffusion
from vlgen.diffusion.diffusers_schedulers import diffusers_config

MU, STD = 0.5, 0.3  # Gaussian "data": every pixel ~ N(0.5, 0.3^2)
ALPHAS_CUMPROD = create_diffusion().tables.alphas_cumprod


def gaussian_oracle(x, t, **_):
    """The exact eps-prediction E[eps | x_t] for Gaussian data (t: original timesteps)."""
    alpha_bar = ALPHAS_CUMPROD.to(x.device)[t].to(x.dtype).view(-1, 1, 1, 1)
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return b * (x - a * MU) / (a * a * STD * STD + b * b)


def prior_noise(n=4000, seed=0):
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "sampler, spacing, variance",
    [pytest.param("ddpm", "1000", dict(sigma_small=True), marks=pytest.mark.slow), ("ddpm", "250", dict(sigma_small=False)),
     ("ddim", "250", {})],
)
def test_oracle_denoiser_reproduces_the_data_distribution(sampler, spacing, variance):
    diffusion = create_diffusion(spacing, learn_sigma=False, **variance)
    if sampler == "ddpm":
        x = sample_ddpm(gaussian_oracle, diffusion, prior_noise(), generator=torch.Generator().manual_seed(1), progress=False)
    else:
        x = sample_ddim(gaussian_oracle, diffusion, prior_noise(), progress=False)
    # 64,000 draws: sampling error ~0.001 on the mean; the rest is discretisation (stated bounds).
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.03)


def test_diffusers_dpm_solver_configured_from_our_schedule_reproduces_the_data():
    scheduler = DPMSolverMultistepScheduler.from_config(diffusers_config(learn_sigma=False))
    scheduler.set_timesteps(100)  # its discretisation error is < 1% of the std from here on
    x = prior_noise(2000).float()
    for t in scheduler.timesteps:
        x = scheduler.step(gaussian_oracle(x, t.expand(len(x))), t, x).prev_sample
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.03)


def test_ddpm_sampler_equals_diffusers_ddpm_scheduler():
    model = tiny_model()
    y = torch.tensor([1, 2, 3])
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    diffusion = create_diffusion("25")
    ours = sample_ddpm(model, diffusion, noise, generator=torch.Generator().manual_seed(1), progress=False, y=y)

    scheduler = DDPMScheduler.from_config(diffusers_config(), timestep_spacing="linspace")
    scheduler.set_timesteps(25)  # "linspace" spacing: the steps of our respaced "25"
    assert scheduler.timesteps.tolist() == list(diffusion.timestep_map[::-1])
    x, generator = noise.clone(), torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.expand(3), y), t, x, generator=generator).prev_sample
    # Same model, noise and steps; our tables are float64, diffusers' float32: relative 1e-5.
    assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_ddim_sampler_equals_diffusers_ddim_scheduler():
    model = tiny_model()
    y = torch.tensor([4, 5, 6])
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    ours = sample_ddim(model, create_diffusion("ddim10"), noise, progress=False, y=y)
    scheduler = DDIMScheduler.from_config(diffusers_config())  # "leading" spacing: our "ddimN" stride
    scheduler.set_timesteps(10)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.expand(3), y)[:, :4], t, x).prev_sample
    assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_ddim_with_eta_one_draws_noise_and_is_reproducible():
    diffusion = create_diffusion("20", learn_sigma=False)
    noise = prior_noise(8)
    first = sample_ddim(gaussian_oracle, diffusion, noise, eta=1.0, generator=torch.Generator().manual_seed(3), progress=False)
    again = sample_ddim(gaussian_oracle, diffusion, noise, eta=1.0, generator=torch.Generator().manual_seed(3), progress=False)
    deterministic = sample_ddim(gaussian_oracle, diffusion, noise, eta=0.0, progress=False)
    assert torch.equal(first, again) and not torch.allclose(first, deterministic)


def test_cfg_wrapper_one_batched_forward_per_step_and_scale_one_is_conditional():
    model = tiny_model()
    calls = []
    model.patch_embed.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    y, noise = torch.tensor([1, 2]), torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    diffusion = create_diffusion("5")
    guided = classifier_free_guidance(model, 3.0, null_label=model.null_class_id, guided_channels=4)
    sample_ddpm(guided, diffusion, noise, generator=torch.Generator().manual_seed(0), progress=False, y=y)
    assert calls == [4] * 5
    unit = classifier_free_guidance(model, 1.0, null_label=model.null_class_id, guided_channels=4)
    plain = sample_ddpm(model, diffusion, noise, generator=torch.Generator().manual_seed(0), progress=False, y=y)
    assert torch.equal(sample_ddpm(unit, diffusion, noise, generator=torch.Generator().manual_seed(0), progress=False, y=y), plain)


def test_cfg_matches_the_model_forward_and_respects_the_interval():
    model = tiny_model()
    x, y = torch.randn(2, 4, 16, 16), torch.tensor([3, 7])
    guided = classifier_free_guidance(model, 2.5, null_label=model.null_class_id, guided_channels=4, interval=(100, 600))
    inside, outside = torch.tensor([300, 600]), torch.tensor([50, 601])
    assert torch.allclose(guided(x, inside, y), model.forward_with_cfg(x, inside, y, 2.5), atol=1e-5)
    assert torch.allclose(guided(x, outside, y), model(x, outside, y), atol=1e-6)
    mixed = guided(x, torch.tensor([300, 700]), y)
    assert torch.allclose(mixed[0], model.forward_with_cfg(x, torch.tensor([300, 300]), y, 2.5)[0], atol=1e-5)
    assert torch.allclose(mixed[1], model(x, torch.tensor([700, 700]), y)[1], atol=1e-5)


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim])
def test_nan_model_output_names_the_step(sampler):
    def broken(x, t):
        return torch.where(t < 600, torch.nan, 0.0).view(-1, 1, 1, 1).expand(*x.shape[:1], 8, *x.shape[2:])

    with pytest.raises(FloatingPointError, match=r"NaN or inf at sampling step 5\b"):
        sampler(broken, create_diffusion("10"), torch.randn(2, 4, 4, 4), progress=False)


@pytest.mark.slow
def test_tiny_model_learns_a_toy_dataset_with_the_hybrid_loss():
    """Two classes of fixed 4x8x8 patterns; 300 AdamW steps cut the hybrid loss by >= 10x (measured 28x)."""
    torch.manual_seed(0)
    patterns = torch.stack([torch.linspace(-1, 1, 256).view(4, 8, 8), torch.linspace(1, -1, 256).view(4, 8, 8).flip(-1)])
    model = tiny_model("DiT-LLaMA-S/2", randomize=False, sample_size=8, hidden_size=64, num_heads=4, num_classes=2).train()
    diffusion = create_diffusion()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    losses = []
    for _ in range(300):
        y = torch.randint(0, 2, (32,))
        x0 = patterns[y]
        loss = diffusion.training_losses(model, x0, diffusion.sample_times(32, "cpu"), y=y)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < first / 10, (first, last)
