"""The denoiser drops into code written for diffusers' DiTTransformer2DModel: its call convention,
its output object, config.out_channels, and diffusers' own DiTPipeline."""
import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_vae
from diffusers import DDIMScheduler, DiTPipeline
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from vlgen.models import VisionLLaMADenoiser
from vlgen.pipelines import create_pipeline

DDPM = {"kind": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000}


@pytest.mark.parametrize("name", ["DiT-LLaMA-S/2", "SiT-LLaMA-S/2", "DiT-S/2"])
def test_diffusers_call_convention_gives_the_same_numbers(name, inputs):
    model = tiny_model(name)
    x, t, y = inputs
    expected = model(x, t, y)
    out = model(x, timestep=t, class_labels=y)
    assert isinstance(out, Transformer2DModelOutput) and torch.equal(out.sample, expected)
    assert torch.equal(model(hidden_states=x, timestep=t, class_labels=y, return_dict=False), expected)
    assert torch.equal(model(x, t, y, return_dict=True).sample, expected)
    assert torch.equal(model(x, t, y=y), expected)  # the samplers' denoise(x, t, y=...) contract


def test_the_two_names_of_an_argument_are_not_both_taken(inputs):
    model = tiny_model()
    x, t, y = inputs
    with pytest.raises(TypeError, match="give x or hidden_states, not both"):
        model(x, t, y, hidden_states=x)
    with pytest.raises(TypeError, match=r"missing the argument y \(or class_labels\)"):
        model(x, timestep=t)


@pytest.mark.parametrize("name, channels", [("DiT-LLaMA-S/2", 8), ("SiT-LLaMA-S/2", 4), ("DiT-S/2", 8)])
def test_config_records_out_channels_and_refuses_a_wrong_one(name, channels, tmp_path):
    model = tiny_model(name)
    assert model.config.out_channels == model.out_channels == channels
    model.save_pretrained(tmp_path / "m")
    assert VisionLLaMADenoiser.from_pretrained(tmp_path / "m").config.out_channels == channels
    with pytest.raises(ValueError, match="out_channels=5 does not match the model"):
        tiny_model(name, out_channels=5)


def test_diffusers_dit_pipeline_samples_with_a_vlgen_transformer(tmp_path):
    """DiTPipeline(transformer=vlgen model, vae, scheduler) gives the images of vlgen's own pipeline
    with the same scheduler, noise and guidance (both guide every latent channel)."""
    vae = tiny_vae(tmp_path / "vae", shift_factor=None)  # DiTPipeline decodes x / scaling_factor only
    model = tiny_model("DiT-LLaMA-S/2", sample_size=8, num_classes=1000)  # DiTPipeline's null class is 1000
    ours = create_pipeline(model, DDPM, [f"class {i}" for i in range(1000)], vae)
    ours.scheduler = DDIMScheduler.from_config(ours.scheduler.config)
    dit = DiTPipeline(transformer=model, vae=vae, scheduler=DDIMScheduler.from_config(ours.scheduler.config))
    for pipe in (ours, dit):
        pipe.set_progress_bar_config(disable=True)
    labels = [3, 999]
    images = dit(labels, guidance_scale=4.0, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))  # DiTPipeline's draw
    expected = ours(labels, guidance_scale=4.0, num_inference_steps=5, latents=noise, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and images.std() > 0.01
    np.testing.assert_allclose(images, expected, rtol=0, atol=2e-5)
