"""Pipelines with diffusers schedulers: every listed one runs, the equivalences with vlgen's own
samplers, the flow time conversion, swaps that survive saving, generic loading, unfit schedulers."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_model
from diffusers import (DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler,
                       FlowMatchEulerDiscreteScheduler)
from test_pipelines import DDPM, FLOW, NAMES, seeded, tiny_pipeline

from vlgen.pipelines import SCHEDULERS, DiTLLaMAPipeline, FlowSampler, SiTLLaMAPipeline, create_pipeline, load_pipeline
from vlgen.sampling import sample_ode
from vlgen.transport import Transport


@pytest.mark.parametrize("kind, name", [(kind, name) for kind in SCHEDULERS for name in SCHEDULERS[kind]])
def test_every_listed_scheduler_samples_through_the_pipeline(kind, name):
    pipe = tiny_pipeline(kind).use_sampler(name, **({"method": "euler"} if name == "ode" else {}))  # dopri5 adapts
    calls = []
    pipe.transformer.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    out = pipe([1, 8], guidance_scale=2.0, num_inference_steps=4, generator=seeded(), output_type="latent").images
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    assert calls and set(calls) == {4}  # each evaluation is one batched forward of the conditional + null halves
    assert (out - pipe([1, 8], guidance_scale=2.0, num_inference_steps=4, generator=seeded(1),
                       output_type="latent").images).abs().max() > 1e-3  # the noise matters


def test_diffusers_ddpm_scheduler_equals_our_ancestral_sampler_with_guidance():
    pipe = tiny_pipeline("ddpm")
    noise = torch.randn(3, 3, 16, 16, generator=seeded(5))
    run = dict(guidance_scale=3.0, num_inference_steps=25, latents=noise, output_type="latent")
    ours = pipe.use_sampler("ddpm", num_inference_steps=25)([2, 0, 7], generator=seeded(1), **run).images
    theirs = pipe.use_sampler("diffusers-ddpm")([2, 0, 7], generator=seeded(1), **run).images
    assert isinstance(pipe.scheduler, DDPMScheduler) and pipe.scheduler.config.variance_type == "learned_range"
    # Same model, noise draws and steps; our tables are float64, diffusers' float32.
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4 * ours.abs().max().item())


def test_flow_matching_euler_is_sample_ode_euler_with_t_equal_one_minus_sigma():
    pipe = tiny_pipeline("flow")
    noise = torch.randn(2, 3, 16, 16, generator=seeded(2))
    labels = torch.tensor([4, 6])
    direct = sample_ode(pipe.transformer, Transport(), noise, method="euler", num_steps=6, progress=False, y=labels)
    out = pipe.use_sampler("flow-euler")([4, 6], guidance_scale=1.0, num_inference_steps=6, latents=noise,
                                          output_type="latent").images
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-5)
    assert (out - noise).abs().max() > 0.1


@pytest.mark.parametrize("kind, scheduler_class", [("ddpm", DPMSolverMultistepScheduler),
                                                    ("flow", FlowMatchEulerDiscreteScheduler)])
def test_a_scheduler_swapped_by_from_config_survives_saving(kind, scheduler_class, tmp_path):
    pipe = tiny_pipeline(kind)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    expected = pipe([0, 5], num_inference_steps=5, generator=seeded(), output_type="np").images
    pipe.save_pretrained(tmp_path / "pipe")
    generic = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    for loaded in (load_pipeline(tmp_path / "pipe"), generic):
        assert type(loaded.scheduler) is scheduler_class
        assert type(loaded) is (DiTLLaMAPipeline if kind == "ddpm" else SiTLLaMAPipeline)
        assert loaded.config.process == pipe.config.process
        loaded.set_progress_bar_config(disable=True)
        assert np.array_equal(loaded([0, 5], num_inference_steps=5, generator=seeded(), output_type="np").images,
                              expected)


def test_the_default_scheduler_config_carries_the_models_schedule():
    cosine = {**DDPM, "noise_schedule": "cosine", "prediction": "v"}
    pipe = create_pipeline(tiny_model("DiT-LLaMA-S/2", in_channels=3), cosine, NAMES)
    assert type(pipe.scheduler) is DPMSolverMultistepScheduler  # the default: DPM-Solver++ 2M (README, Which sampler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++" and pipe.scheduler.config.timestep_spacing == "leading"
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.num_train_timesteps == 1000
    alpha_bar = np.cos((np.arange(1, 1001) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), alpha_bar, rtol=2e-4, atol=1e-8)  # cosine, closed form
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    assert pipe([1], num_inference_steps=3, output_type="np").images.shape == (1, 16, 16, 3)


def test_dpm_solver_keeps_every_latent_channel_of_a_learned_sigma_model():
    """diffusers' DPM-Solver cuts a learned-variance output to 3 channels; the pipeline gives it
    the prediction channels of a 4-channel latent model without that cut."""
    pipe = create_pipeline(tiny_model("DiT-LLaMA-S/2"), DDPM, NAMES, sampler="dpm-solver++")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.variance_type == "learned_range"
    out = pipe([1, 2], num_inference_steps=5, generator=seeded(), output_type="latent").images
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind, scheduler, message", [
    ("ddpm", DDIMScheduler(prediction_type="v_prediction"),
     "prediction_type is 'v_prediction'; the model predicts 'epsilon'"),
    ("ddpm", DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000), "betas differ"),
    ("ddpm", DDPMScheduler(num_train_timesteps=500), "500 betas differ"),
    ("ddpm", FlowMatchEulerDiscreteScheduler(), "flow-matching scheduler and the model was trained with DDPM"),
    ("flow", DDPMScheduler(), "not a flow-matching scheduler"),
])
def test_a_scheduler_that_does_not_fit_is_refused(kind, scheduler, message):
    pipe = tiny_pipeline(kind)
    pipe.scheduler = scheduler
    with pytest.raises(ValueError, match=message):
        pipe([0], num_inference_steps=3)


def test_flow_matching_schedulers_need_the_linear_velocity_model():
    linear = create_pipeline(tiny_model("SiT-LLaMA-S/2", in_channels=3), FLOW, NAMES)
    assert type(linear.scheduler) is FlowMatchEulerDiscreteScheduler  # the default where it fits (README)
    pipe = create_pipeline(tiny_model("SiT-LLaMA-S/2", in_channels=3), {**FLOW, "path": "GVP"}, NAMES)
    assert type(pipe.scheduler) is FlowSampler and pipe.scheduler.method == "dopri5"  # SiT's ODE elsewhere
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="Linear path with velocity prediction; the model has the GVP path"):
        pipe([0], num_inference_steps=3)
    no_sigma = create_pipeline(tiny_model("DiT-LLaMA-S/2", in_channels=3, learn_sigma=False), DDPM, NAMES)
    no_sigma.scheduler = DDPMScheduler.from_config(no_sigma.scheduler.config, variance_type="learned_range")
    with pytest.raises(ValueError, match="needs learned-variance channels"):
        no_sigma([0], num_inference_steps=3)


def test_callback_on_step_end_sees_and_replaces_the_latents():
    pipe = tiny_pipeline("ddpm").use_sampler("dpm-solver++")
    seen = []

    def callback(pipeline, i, t, tensors):
        seen.append((i, int(t), tensors["latents"].shape))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 3 else tensors

    out = pipe([0, 1], num_inference_steps=4, generator=seeded(), output_type="latent",
               callback_on_step_end=callback).images
    assert [i for i, _, _ in seen] == [0, 1, 2, 3] and seen[0][2] == (2, 3, 16, 16)
    assert seen[0][1] > seen[-1][1]  # timesteps run from noise to data
    assert torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError, match="callback_on_step_end runs with a diffusers scheduler"):
        tiny_pipeline("flow")([0], callback_on_step_end=callback)


def test_karras_sigmas_that_repeat_timesteps_on_the_cosine_schedule_are_refused():
    """The cosine schedule's last alpha-bar is ~2e-9: Karras spacing puts most steps at t = 999,
    where DPM-Solver's step lookup would go wrong (an IndexError deep in diffusers)."""
    cosine = {**DDPM, "noise_schedule": "cosine"}
    pipe = create_pipeline(tiny_model("DiT-LLaMA-S/2", in_channels=3), cosine, NAMES, sampler="dpm-solver++-karras")
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="repeats timesteps over the model's schedule"):
        pipe([0], num_inference_steps=10)
    assert pipe.use_sampler("dpm-solver++")([0], num_inference_steps=10, output_type="np").images.shape == (1, 16, 16, 3)


def test_a_pipeline_exported_by_an_earlier_version_asks_to_be_exported_again(tmp_path):
    pipe = tiny_pipeline("flow")
    pipe.save_pretrained(tmp_path / "pipe")
    index = tmp_path / "pipe" / "model_index.json"
    config = json.loads(index.read_text())
    del config["process"]
    index.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="exported by an earlier vlgen.*vlgen export CHECKPOINT"):
        load_pipeline(tmp_path / "pipe")
