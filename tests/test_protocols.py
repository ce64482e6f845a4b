"""`vlgen sample --protocol`: each paper's evaluation settings, checked against its official
sampling script; flags win one by one; the npz records what made it and repeats byte for byte."""
import argparse
import json

import numpy as np
import pytest
import torch
from test_pipelines import tiny_pipeline

from vlgen.commands import sample as sample_module
from vlgen.commands.cli import main
from vlgen.commands.protocols import PROTOCOLS, resolve_settings
from vlgen.commands.sample import sample_label
from vlgen.pipelines import DDPMSampler, FlowSampler

# The official scripts' values: DiT's sample_ddp.py (and VisionLLaMA's copy of it: --num-sampling-steps
# 250, --cfg-scale 1.5, forward_with_cfg guiding model_out[:, :3], labels torch.randint, the model in
# float32, --tf32 on by default; DiT's paper numbers at FP32), SiT's sample_ddp.py with
# train_utils.py's ODE/SDE defaults (dopri5, atol 1e-6, rtol 1e-3; Euler, sigma, norm 1.0, Mean,
# last step 0.04; 250 steps) and --cfg-scale 1.5 for the headline FID.
OFFICIAL = {
    "dit": dict(sampler="ddpm", num_inference_steps=250, guidance_scale=1.5, guided_channels=3, dtype="float32",
                tf32=False, num_samples=50_000, class_labels="random", options={}),
    "visionllama": dict(sampler="ddpm", num_inference_steps=250, guidance_scale=1.5, guided_channels=3,
                        dtype="float32", tf32=True, num_samples=50_000, class_labels="random", options={}),
    "sit-sde": dict(sampler="sde", num_inference_steps=250, guidance_scale=1.5, guided_channels=3, dtype="float32",
                    tf32=True, num_samples=50_000, class_labels="random",
                    options=dict(method="euler", diffusion_form="sigma", diffusion_norm=1.0, last_step="mean",
                                 last_step_size=0.04)),
    "sit-ode": dict(sampler="ode", num_inference_steps=None, guidance_scale=1.5, guided_channels=3, dtype="float32",
                    tf32=True, num_samples=50_000, class_labels="random",
                    options=dict(method="dopri5", atol=1e-6, rtol=1e-3)),
    # LightningDiT's inference.py and configs: ODE euler, num_sampling_steps 250 time points,
    # timestep_shift 0.3 on t (the SD3 shift 1 / 0.3 on the noise level), cfg_interval_start 0.11,
    # cfg_scale 6.7 (800 epochs), forward_with_cfg guiding model_out[:, :3], allow_tf32 True.
    "lightningdit": dict(sampler="ode", num_inference_steps=249, guidance_scale=6.7, guided_channels=3,
                         guidance_interval=(0.11, 1.0), dtype="float32", tf32=True, num_samples=50_000,
                         class_labels="random", options=dict(method="euler", shift=1 / 0.3)),
}
FLAGS = ("num_samples", "guidance_scale", "guided_channels", "guidance_interval", "num_inference_steps", "sampler",
         "dtype", "tf32", "class_labels")


def namespace(protocol, **given):
    return argparse.Namespace(protocol=protocol, grid=None, **{name: given.get(name) for name in FLAGS})


@pytest.mark.parametrize("name", PROTOCOLS)
def test_a_protocol_sets_what_its_official_script_does(name):
    args = namespace(name)
    options = resolve_settings(args, {})
    expected = dict(OFFICIAL[name])
    assert options == expected.pop("options")
    assert {key: getattr(args, key) for key in expected} == expected
    assert args.overridden == []


def test_a_flag_wins_over_the_protocol_and_is_named():
    args = namespace("dit", num_inference_steps=25, tf32=True)
    options = resolve_settings(args, {"eta": 0.0})
    assert args.num_inference_steps == 25 and args.tf32 is True and args.guided_channels == 3
    assert options == {"eta": 0.0} and args.overridden == ["num_inference_steps", "tf32"]


def test_random_labels_are_uniform_seeded_and_batch_independent():
    labels = [sample_label("random", 0, i, 10) for i in range(5000)]
    assert labels == [sample_label("random", 0, i, 10) for i in range(5000)]
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 400 and counts.max() < 600  # uniform: 500 each, give or take a few sigma
    assert labels != [sample_label("random", 1, i, 10) for i in range(5000)]
    assert [sample_label("balanced", 0, i, 10) for i in range(12)] == [*range(10), 0, 1]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    for kind in ("ddpm", "flow"):
        tiny_pipeline(kind).save_pretrained(root / kind)
    return root


@pytest.mark.parametrize("name", PROTOCOLS)
def test_the_protocol_reaches_the_pipeline(name, pipelines, tmp_path, monkeypatch, capsys):
    kind = PROTOCOLS[name].kind
    calls, seen_tf32 = [], []
    original = sample_module.generate

    def recording(pipe, labels, indices, args):
        calls.append((type(pipe.scheduler), dict(pipe.scheduler.config), pipe.transformer.dtype, args.guidance_scale,
                      args.guided_channels, args.num_inference_steps))
        seen_tf32.append(torch.backends.cuda.matmul.fp32_precision)
        return original(pipe, labels, indices, args)

    monkeypatch.setattr(sample_module, "generate", recording)
    steps = [] if name == "sit-ode" else ["--num-inference-steps", "3"]
    out = tmp_path / "s.npz"
    assert main(["sample", "--pipeline", str(pipelines / kind), "--protocol", name, "--num-samples", "4",
                 "--batch-size", "2", "--out", str(out), *steps]) == 0
    expected = OFFICIAL[name]
    scheduler, config, dtype, guidance, channels, _ = calls[0]
    assert scheduler is (DDPMSampler if kind == "ddpm" else FlowSampler) and config["sampler"] == expected["sampler"]
    assert all(config[key] == value for key, value in expected["options"].items())
    assert (dtype, guidance, channels) == (torch.float32, expected["guidance_scale"], 3)
    assert seen_tf32[0] == ("tf32" if expected["tf32"] else "ieee")
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["protocol"] == name and record["settings"]["guided_channels"] == 3
    assert record["settings"]["class_labels"] == "random" and record["settings"]["tf32"] == expected["tf32"]
    said = capsys.readouterr()
    assert f"protocol {name} (" in said.out + said.err


def test_a_protocol_of_the_other_process_is_refused(pipelines, tmp_path, capsys):
    assert main(["sample", "--pipeline", str(pipelines / "ddpm"), "--protocol", "sit-sde", "--num-samples", "2",
                 "--out", str(tmp_path / "s.npz")]) == 2
    assert "--protocol sit-sde samples flow models; this pipeline's model was trained with ddpm: use --protocol " \
           "dit or visionllama" in capsys.readouterr().err


def test_the_same_protocol_and_seed_give_the_same_npz_bytes(pipelines, tmp_path):
    files = []
    for run in range(2):
        out = tmp_path / f"run{run}.npz"
        assert main(["sample", "--pipeline", str(pipelines / "ddpm"), "--protocol", "dit", "--num-samples", "4",
                     "--batch-size", "3", "--num-inference-steps", "3", "--seed", "7", "--out", str(out)]) == 0
        files.append(out.read_bytes())
    assert files[0] == files[1]
    with np.load(tmp_path / "run0.npz") as data:
        assert data["arr_0"].shape == (4, 16, 16, 3) and data["arr_1"].tolist() == [
            sample_label("random", 7, i, 10) for i in range(4)]
