"""The vlgen side of every row of docs/guides/migration.md, run on tiny models; the rows and the checks
are the same set."""
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_vae
from diffusers import DDIMScheduler, DiffusionPipeline, DiTPipeline, DPMSolverMultistepScheduler
from test_pipelines import tiny_pipeline

from vlgen.commands.cli import build_parser
from vlgen.diffusion import create_diffusion
from vlgen.evaluation import evaluate
from vlgen.models import VisionLLaMADenoiser
from vlgen.pipelines import SiTLLaMAPipeline, load_pipeline
from vlgen.sampling import classifier_free_guidance, sample_ddim, sample_ddpm, sample_ode, sample_sde
from vlgen.training import load_config
from vlgen.transport import Transport

ROOT = Path(__file__).resolve().parents[1]
ROWS = re.findall(r"^\| `([a-z-]+)` \|", (ROOT / "docs" / "guides" / "migration.md").read_text(), flags=re.MULTILINE)
CHECKS = {}


def row(name):
    def register(check):
        CHECKS[name] = check
        return check
    return register


def parses(command):
    """The `vlgen` command line as its parser reads it (after `accelerate launch ... -m vlgen`)."""
    return build_parser().parse_args(command.split())


def batch():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 16, 16, generator=generator), torch.tensor([1, 7])


@row("dit-create")
def _(tmp_path):
    diffusion = create_diffusion("")
    assert diffusion.num_timesteps == 1000
    np.testing.assert_allclose(diffusion.tables.betas, np.linspace(1e-4, 0.02, 1000))  # DiT's linear schedule


@row("dit-times")
def _(tmp_path):
    t = create_diffusion("").sample_times(64, "cpu")
    assert t.shape == (64,) and t.dtype == torch.int64 and 0 <= t.min() and t.max() < 1000


@row("dit-loss")
def _(tmp_path):
    model, (x, y) = tiny_model("DiT-LLaMA-S/2"), batch()
    seen = []
    recording = lambda x_t, t, **kwargs: seen.append(kwargs) or model(x_t, t, **kwargs)  # noqa: E731
    diffusion = create_diffusion("")
    loss = diffusion.training_losses(recording, x, torch.tensor([10, 900]), y=y)["loss"]
    assert loss.shape == (2,) and torch.isfinite(loss).all() and torch.equal(seen[0]["y"], y)


@row("dit-cfg")
def _(tmp_path):
    model, (z, y) = tiny_model("DiT-LLaMA-S/2"), batch()
    t = torch.tensor([500, 500])
    # DiT's forward_with_cfg, written from its models.py: a doubled batch, the first 3 channels guided.
    doubled = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)]))
    eps, rest = doubled[:, :3], doubled[:, 3:]
    cond, uncond = eps.chunk(2)
    reference = torch.cat([uncond + 4.0 * (cond - uncond), rest[:2]], dim=1)
    torch.testing.assert_close(model.forward_with_cfg(z, t, y, guidance_scale=4.0, guided_channels=3), reference,
                               rtol=1e-5, atol=1e-5)


@row("dit-sample")
def _(tmp_path):
    model, (z, y) = tiny_model("DiT-LLaMA-S/2"), batch()
    denoise = classifier_free_guidance(model, 1.5, model.null_class_id, guided_channels=3)
    out = sample_ddpm(denoise, create_diffusion("10"), z, y=y, progress=False)
    assert out.shape == z.shape and torch.isfinite(out).all()


@row("dit-ddim")
def _(tmp_path):
    model, (z, y) = tiny_model("DiT-LLaMA-S/2"), batch()
    out = sample_ddim(model, create_diffusion("ddim5"), z, eta=0.0, y=y, progress=False)
    assert out.shape == z.shape and torch.isfinite(out).all()


@row("dit-convert")
def _(tmp_path):
    args = parses("convert DiT-XL-2-256x256.pt --from dit --out dit-xl-2")
    assert (args.source, args.out) == ("dit", "dit-xl-2")
    tiny_model("DiT-S/2").save_pretrained(tmp_path / "dit-xl-2")
    assert VisionLLaMADenoiser.from_pretrained(tmp_path / "dit-xl-2").config.block_type == "dit"


def check_training_command(config_name):
    args = parses(f"train --config configs/imagenet256/{config_name} --set data.path=/imagenet/latents")
    config = load_config(ROOT / args.config, args.overrides)
    assert config.data.kind == "latents" and config.data.path == "/imagenet/latents"
    return config


@row("dit-train")
def _(tmp_path):
    config = check_training_command("dit-xl-2.yaml")
    assert config.model.name == "DiT-XL/2" and config.objective.kind == "ddpm"


@row("dit-fid-samples")
def _(tmp_path):
    args = parses("sample --pipeline PIPELINE --num-samples 50000 --guidance-scale 1.5 --sampler ddpm "
                  "--num-inference-steps 250 --out samples.npz")
    assert (args.num_samples, args.guidance_scale, args.sampler, args.num_inference_steps) == (50000, 1.5, "ddpm", 250)


@row("sit-create")
def _(tmp_path):
    transport = Transport("Linear", "velocity")
    assert (transport.path_type, transport.prediction) == ("Linear", "velocity")


@row("sit-loss")
def _(tmp_path):
    model, (x, y) = tiny_model("SiT-LLaMA-S/2"), batch()
    loss = Transport("Linear", "velocity").training_losses(model, x, y=y)["loss"]
    assert loss.shape == (2,) and torch.isfinite(loss).all()


@row("sit-ode")
def _(tmp_path):
    model, (z, y) = tiny_model("SiT-LLaMA-S/2"), batch()
    out = sample_ode(model, Transport("Linear", "velocity"), z, method="dopri5", atol=1e-6, rtol=1e-3, y=y,
                     progress=False)
    assert out.shape == z.shape and torch.isfinite(out).all()


@row("sit-sde")
def _(tmp_path):
    model, (z, y) = tiny_model("SiT-LLaMA-S/2"), batch()
    out = sample_sde(model, Transport("Linear", "velocity"), z, method="euler", diffusion_form="sigma",
                     last_step="mean", last_step_size=0.04, num_steps=10, y=y, progress=False)
    assert out.shape == z.shape and torch.isfinite(out).all()


@row("sit-train")
def _(tmp_path):
    config = check_training_command("sit-xl-2.yaml")
    assert config.model.name == "SiT-XL/2" and config.objective.kind == "flow"


@row("sit-fid-samples")
def _(tmp_path):
    args = parses("sample --pipeline PIPELINE --num-samples 50000 --guidance-scale 1.5 --sampler sde --out samples.npz")
    assert (args.num_samples, args.guidance_scale, args.sampler) == (50000, 1.5, "sde")


@row("diffusers-load")
def _(tmp_path):
    tiny_pipeline("flow").save_pretrained(tmp_path / "pipe")
    for pipe in (DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True),
                 load_pipeline(tmp_path / "pipe")):
        assert type(pipe) is SiTLLaMAPipeline


@row("diffusers-scheduler")
def _(tmp_path):
    pipe = tiny_pipeline("ddpm")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    images = pipe([0], num_inference_steps=3, output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    assert type(pipe.use_sampler("dpm-solver++").scheduler) is DPMSolverMultistepScheduler


@row("diffusers-labels")
def _(tmp_path):
    pipe = tiny_pipeline("ddpm")
    assert pipe.get_label_ids(["star"]) == [5]
    by_name = pipe(["star"], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    by_id = pipe(class_labels=pipe.get_label_ids(["star"]), num_inference_steps=3,
                 generator=torch.Generator().manual_seed(0), output_type="np")
    np.testing.assert_array_equal(by_name.images, by_id.images)


@row("diffusers-transformer")
def _(tmp_path):
    model, (x, y) = tiny_model("DiT-LLaMA-S/2"), batch()
    t = torch.tensor([3, 700])
    assert torch.equal(model(x, timestep=t, class_labels=y).sample, model(x, t, y))


@row("diffusers-dit-pipeline")
def _(tmp_path):
    scheduler = DDIMScheduler.from_config(tiny_pipeline("ddpm").scheduler.config)  # the model's betas
    model = tiny_model("DiT-LLaMA-S/2", sample_size=8, num_classes=1000)
    dit = DiTPipeline(transformer=model, vae=tiny_vae(tmp_path / "vae", shift_factor=None), scheduler=scheduler)
    dit.set_progress_bar_config(disable=True)
    assert dit([1, 2], num_inference_steps=2, output_type="np").images.shape == (2, 16, 16, 3)


@row("diffusers-convert")
def _(tmp_path):
    args = parses("convert facebook/DiT-XL-2-256 --from diffusers --out dit-xl-2")
    assert (args.source, args.subfolder) == ("diffusers", "transformer")


@row("diffusers-push")
def _(tmp_path):
    inspect.signature(tiny_pipeline("flow").push_to_hub).bind("me/my-model")  # the upload itself: test_hub


@row("fidelity-cli")
def _(tmp_path):
    args = parses("fid generated/ reference/ --metrics fid,isc,kid --device cuda")
    assert (args.generated, args.reference, args.metrics, args.device) == ("generated/", "reference/", "fid,isc,kid",
                                                                           "cuda")


@row("fidelity-python")
def _(tmp_path):  # the same call as a test of its results: test_fid (against torch-fidelity itself)
    inspect.signature(evaluate).bind("generated/", "reference/", "fid,isc")
    inspect.signature(evaluate).bind("samples.npz", "VIRTUAL_imagenet256_labeled.npz", "fid,sfid,isc,prc")


@row("fidelity-weights")
def _(tmp_path):
    inspect.signature(evaluate).bind("generated/", "reference/", inception_weights="weights.pth")
    assert parses("fid generated/ reference/ --inception-weights weights.pth").inception_weights == "weights.pth"


def test_every_row_has_a_check_and_every_check_a_row():
    assert len(ROWS) == len(set(ROWS)) and set(ROWS) == set(CHECKS)


@pytest.mark.parametrize("name", ROWS)
def test_the_vlgen_side_of_a_row_runs(name, tmp_path):
    CHECKS[name](tmp_path)
