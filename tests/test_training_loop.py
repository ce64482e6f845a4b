"""The training loop: EMA, atomic checkpoints, exact resume, NaN stop, 2-process DDP, learning."""
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file

from conftest import Interrupted, interrupt_training_after, run_launch, tiny_vae, two_process_launch, write_image_folder
from vlgen.pipelines import load_pipeline
from vlgen.commands.export import export_checkpoint
from vlgen.core.optimizer import create_adamw
from vlgen.data.shapes import ShapesDataset
from vlgen.models import VisionLLaMADenoiser
from vlgen.training import checkpoint as checkpoint_module
from vlgen.training import load_config, train
from vlgen.training.checkpoint import latest_checkpoint, list_checkpoints
from vlgen.training.ema import create_ema, update_ema

# A tiny run: 16x16 shapes, 2 blocks of width 64, batch 8.
TINY = ["model.hidden_size=64", "model.depth=2", "model.num_heads=2", "data.resolution=16", "data.num_samples=200",
        "data.num_workers=0", "train.global_batch_size=8", "train.lr=1e-3", "train.ema_decay=0.9",
        "logging.sample_every=0", "logging.tracker=null", "logging.log_every=1",
        'train.mixed_precision="no"']  # float32 on every CPU; "auto" (the default) has its own tests
FRAMEWORKS = {"flow": ["objective.kind=flow", "model.name=SiT-LLaMA-S/4"],
              "ddpm": ["objective.kind=ddpm", "model.name=DiT-LLaMA-S/4"]}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each test starts without accelerate's state


def tiny_config(output_dir, *overrides, framework="flow"):
    return load_config(overrides=[*TINY, *FRAMEWORKS[framework], f"logging.output_dir={output_dir}", *overrides])


def weights(directory):
    return load_file(str(Path(directory) / "model.safetensors"))


def test_ema_update_formula():
    model = torch.nn.Linear(3, 2)
    ema = create_ema(model)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, decay=0.75)
    for e, b, m in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * m, rtol=0, atol=1e-7)
    update_ema(ema, model, decay=0.0)  # decay 0 copies
    assert all(torch.equal(e, m) for e, m in zip(ema.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="EMA decay must be in"):
        update_ema(ema, model, decay=1.5)


def test_run_writes_checkpoints_metrics_and_tracker_logs(tmp_path):
    config = tiny_config(tmp_path, "train.max_steps=4", "logging.checkpoint_every=2", "logging.tracker=tensorboard")
    run = train(config)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000004"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["images_per_s"] > 0 and r["skipped_images"] == 0 for r in records)
    assert list(tmp_path.rglob("events.out.tfevents.*")), "no TensorBoard event file"
    saved = weights(tmp_path / "checkpoints" / "step-0000004")
    for name, value in run.model.state_dict().items():
        assert torch.equal(saved[name], value)
    ema = VisionLLaMADenoiser.from_pretrained(tmp_path / "checkpoints" / "step-0000004" / "ema")
    for a, b in zip(ema.parameters(), run.ema.parameters()):
        assert torch.equal(a, b)
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("framework", ["flow", "ddpm"])
def test_resume_after_a_kill_equals_the_uninterrupted_run_bitwise(tmp_path, monkeypatch, framework):
    overrides = ["train.max_steps=7", "logging.checkpoint_every=3", "train.warmup_steps=4"]
    reference = train(tiny_config(tmp_path / "straight", *overrides, framework=framework))

    with monkeypatch.context() as patch:
        interrupt_training_after(patch, 5)  # dies after step 5: the newest checkpoint is step 3
        with pytest.raises(Interrupted):
            train(tiny_config(tmp_path / "killed", *overrides, framework=framework))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert latest_checkpoint(tmp_path / "killed").name == "step-0000003"
    resumed = train(tiny_config(tmp_path / "killed", *overrides, framework=framework), resume="latest")

    for name, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    for a, b in zip(reference.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    assert reference.optimizer.state_dict()["state"][0]["step"] == resumed.optimizer.state_dict()["state"][0]["step"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line)["loss"] for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert losses == straight  # records of the lost steps 4-5 were replaced, not duplicated


def test_resume_latest_without_checkpoints_starts_fresh_and_other_configs_are_refused(tmp_path):
    run = train(tiny_config(tmp_path, "train.max_steps=2"), resume="latest")
    assert run.step == 2
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"trained with another config \(train.lr: 0.001 there, 0.002 now\)"):
        train(tiny_config(tmp_path, "train.max_steps=4", "train.lr=2e-3"), resume="latest")
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"another config \(data.resolution: 16 there, 32 now\)"):
        train(tiny_config(tmp_path, "train.max_steps=4", "data.resolution=32"), resume="latest")
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(FileNotFoundError, match="resume checkpoint .*nowhere does not exist"):
        train(tiny_config(tmp_path, "train.max_steps=4"), resume=str(tmp_path / "nowhere"))


def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        if "optimizer" in str(path) and "step-0000004" in str(path):
            raise OSError("disk full (simulated)")
        calls["n"] += 1
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_config(tmp_path, "train.max_steps=4", "logging.checkpoint_every=2"))
    monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=True)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002"]  # the failed save: gone
    (tmp_path / "checkpoints" / ".step-0000004.123-abcd.tmp").mkdir()  # what a killed save leaves: never listed
    run = train(tiny_config(tmp_path, "train.max_steps=4", "logging.checkpoint_every=2"), resume="latest")
    assert run.step == 4 and [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000004"]


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from vlgen.transport import Transport

    original = Transport.training_losses
    calls = {"n": 0}

    def losses(self, *args, **kwargs):
        calls["n"] += 1
        terms = original(self, *args, **kwargs)
        return {"loss": terms["loss"] * float("nan")} if calls["n"] == 5 else terms

    monkeypatch.setattr(Transport, "training_losses", losses)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 5; .*step-0000004"):
        train(tiny_config(tmp_path, "train.max_steps=8", "logging.checkpoint_every=2", "logging.log_every=3"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000004"]


def test_training_on_images_with_a_corrupt_file(tmp_path):
    root = tmp_path / "images"
    for label in range(2):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (24, 20), (200 * label, 30 * i, 90)).save(root / f"class{label}" / f"{i}.png")
    (root / "class0" / "2.png").write_bytes(b"\x89PNG truncated")
    images = ["data.kind=images", f"data.path={root}"]
    with pytest.raises(OSError, match="class0/2.png"):
        train(tiny_config(tmp_path / "strict", "train.max_steps=2", *images))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.warns(UserWarning, match="skipping"):
        run = train(tiny_config(tmp_path / "lenient", "train.max_steps=4", "data.skip_bad=true", *images))
    records = [json.loads(line) for line in (tmp_path / "lenient" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_images"] >= 1  # 4 steps of 8 over 8 images: the corrupt file came up
    assert run.data_info["class_names"] == ["class0", "class1"]
    AcceleratorState._reset_state(reset_partial_state=True)
    (root / "class2").mkdir()  # the folder changed under the same config
    Image.new("RGB", (24, 20)).save(root / "class2" / "0.png")
    with pytest.raises(ValueError, match="trained on other data"):
        train(tiny_config(tmp_path / "lenient", "train.max_steps=6", "data.skip_bad=true", *images), resume="latest")


def test_training_on_latents_shape_mismatch_and_export(tmp_path):

    from vlgen.data.latents import extract_latents
    from vlgen.training.loop import Run
    from accelerate import Accelerator

    tiny_vae(tmp_path / "vae")
    root = write_image_folder(tmp_path / "data", per_class=2)
    extract_latents(Accelerator(cpu=True), root, str(tmp_path / "vae"), tmp_path / "latents", resolution=12)
    latents = ["data.kind=latents", f"data.path={tmp_path / 'latents'}"]
    with pytest.raises(ValueError, match="patch size 4, which does not divide the data's size 6"):
        Run(tiny_config(tmp_path / "run", *latents), Accelerator(cpu=True))
    run = train(tiny_config(tmp_path / "run", "model.name=SiT-LLaMA-S/2", "train.max_steps=2", *latents))
    assert run.ema.config.in_channels == 4 and run.ema.config.sample_size == 6
    out = export_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000002", tmp_path / "pipe")
    pipe = load_pipeline(out)
    assert pipe.vae.config.scaling_factor == 0.5 and pipe.vae.config.shift_factor == 0.1
    assert pipe.config.latent_norm is None  # the VAE's scaling only
    AcceleratorState._reset_state(reset_partial_state=True)
    train(tiny_config(tmp_path / "normed", "model.name=SiT-LLaMA-S/2", "train.max_steps=2", "data.latent_norm=channel",
                      *latents))
    normed = load_pipeline(export_checkpoint(tmp_path / "normed" / "checkpoints" / "step-0000002", tmp_path / "p2"))
    meta = json.loads((tmp_path / "latents" / "meta.json").read_text())
    assert normed.config.latent_norm == {"mean": meta["channel_mean"], "std": meta["channel_std"]}
    assert pipe.vae_scale_factor == 2 and pipe.use_sampler("ode", method="euler")(0, num_inference_steps=2).images[0].size == (12, 12)


def test_mixed_precision_and_gradient_checkpointing_switches(tmp_path):
    from vlgen.training.loop import Run

    from accelerate import Accelerator

    base = train(tiny_config(tmp_path / "fp32", "train.max_steps=2"))
    AcceleratorState._reset_state(reset_partial_state=True)
    checkpointed = train(tiny_config(tmp_path / "ckpt", "train.max_steps=2", "model.gradient_checkpointing=true"))
    assert checkpointed.model.gradient_checkpointing
    for name, value in base.model.state_dict().items():
        torch.testing.assert_close(checkpointed.model.state_dict()[name], value, rtol=0, atol=1e-6)
    AcceleratorState._reset_state(reset_partial_state=True)

    config = tiny_config(tmp_path / "bf16", "train.max_steps=2", "train.mixed_precision=bf16")
    run = Run(config, Accelerator(mixed_precision="bf16"))
    seen = []
    for module in (run.model.blocks[0], run.model.blocks[0].attn.qkv):
        module.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    batch = next(iter(run.loader()))
    loss = run.train_step(batch)["loss"]
    # the matmuls run in bf16; the residual stream (a block's output) stays float32, as in DiT
    assert seen == [torch.bfloat16, torch.float32] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in run.model.parameters())  # fp32 master weights


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """model.compile=true (torch.compile in place) trains to the eager weights and writes the same
    checkpoint keys."""
    eager = train(tiny_config(tmp_path / "eager", "train.max_steps=2"))
    AcceleratorState._reset_state(reset_partial_state=True)
    compiled = train(tiny_config(tmp_path / "compiled", "train.max_steps=2", "model.compile=true"))
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None
    saved = weights(tmp_path / "compiled" / "checkpoints" / "step-0000002")
    assert saved.keys() == weights(tmp_path / "eager" / "checkpoints" / "step-0000002").keys()
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=1e-5)
    for a, b in zip(compiled.ema.parameters(), eager.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_export_writes_the_ema_weights(tmp_path):
    run = train(tiny_config(tmp_path / "run", "train.max_steps=2"))
    out = export_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000002", tmp_path / "pipe")
    exported = VisionLLaMADenoiser.from_pretrained(out / "transformer")
    for a, b in zip(exported.parameters(), run.ema.parameters()):
        assert torch.equal(a, b)
    pipe = load_pipeline(out)
    assert type(pipe).__name__ == "SiTLLaMAPipeline" and pipe.config.id2label[4] == "star"
    assert pipe.config.process["path"] == run.config.objective.path
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000002", tmp_path / "pipe")
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        export_checkpoint(tmp_path / "run", tmp_path / "other")


@pytest.mark.slow
@pytest.mark.parametrize("framework, factor", [("flow", 3.0), ("ddpm", 8.0)])
def test_a_tiny_model_learns_shapes(tmp_path, framework, factor):
    """400 steps of batch 16 at 16x16, patch 2: the mean loss of the last 50 steps is `factor`
    times below that of the first 10 (the flow loss has a higher floor: the velocity target
    keeps the noise's variance)."""
    config = tiny_config(tmp_path, "train.max_steps=400", "train.global_batch_size=16", "logging.log_every=10",
                         "logging.checkpoint_every=400", framework=framework)
    config.model.name = config.model.name.replace("/4", "/2")
    train(config)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = losses[0], sum(losses[-5:]) / 5
    print(f"{framework}: loss {first:.4f} -> {last:.4f}, {first / last:.1f}x")
    assert first / last >= factor, (first, last)


def evaluation_loss(run, seed=123, count=256):
    """The run's objective on a fixed batch of real shapes with fixed times and noise, in float32:
    the same measurement for every run, so it compares the models and not their last batches."""
    generator = torch.Generator().manual_seed(seed)
    data = ShapesDataset(run.config.data.resolution, count, seed=seed)
    x = torch.stack([data[(i, False)]["x"] for i in range(count)])
    y = torch.tensor([data[(i, False)]["y"] for i in range(count)])
    t = run.objective.sample_times(count, "cpu", generator)
    noise = torch.randn(x.shape, generator=generator)
    model = run.accelerator.unwrap_model(run.model).eval()
    with torch.no_grad():
        return run.objective.training_losses(model, x, t, noise, y=y)["loss"].mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["flow", "ddpm"])
def test_bf16_training_reaches_the_fp32_loss(tmp_path, framework):
    """bf16 autocast (fp32 master weights, fp32 loss) ends where fp32 training ends, within the
    spread the seed alone gives: 3 seeds x 100 steps of batch 16 at 16x16, patch 2, each precision
    with the same data, times and noise, scored on one fixed evaluation batch. Passes when the mean
    gap is within 3 standard errors of the seed spread (and at most 10% of the loss)."""
    losses = {"no": [], "bf16": []}
    for seed in range(3):
        for precision in losses:
            AcceleratorState._reset_state(reset_partial_state=True)
            config = tiny_config(tmp_path / f"{precision}-{seed}", "train.max_steps=100", "train.global_batch_size=16",
                                 "logging.log_every=50", "logging.checkpoint_every=100", f"train.seed={seed}",
                                 f'train.mixed_precision="{precision}"', framework=framework)
            config.model.name = config.model.name.replace("/4", "/2")
            losses[precision].append(evaluation_loss(train(config)))
    fp32, bf16 = np.array(losses["no"]), np.array(losses["bf16"])
    gap = bf16.mean() - fp32.mean()
    standard_error = np.sqrt(fp32.var(ddof=1) / len(fp32) + bf16.var(ddof=1) / len(bf16))
    print(f"{framework}: fp32 {fp32.round(4)}, bf16 {bf16.round(4)}, gap {gap:+.4f} "
          f"({gap / fp32.mean():+.1%}), standard error {standard_error:.4f}")
    assert abs(gap) <= max(3 * standard_error, 0.005 * fp32.mean()), (fp32, bf16)
    assert abs(gap) <= 0.1 * fp32.mean()


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_combined_batch_and_resume(tmp_path):
    """Two CPU processes under accelerate launch (torchrun, gloo DDP) train 3 steps to the weights
    one process reaches on the same global batch of 8, to 1e-6 (float32 reduction order); stopped
    there and resumed to step 5, they equal one process trained straight to step 5.

    `accelerate launch --cpu --num_processes 2` starts a single process (accelerate runs several
    CPU processes only through mpirun); the torchrun launcher with ACCELERATE_USE_CPU=true gives
    two processes on gloo."""
    overrides = [*TINY, *FRAMEWORKS["flow"], "logging.checkpoint_every=3"]
    args = [arg for override in overrides for arg in ("--set", override)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    launch = [*two_process_launch(), "-m", "vlgen", "train"]
    runs = {"one": ([sys.executable, "-m", "vlgen", "train"], ["train.max_steps=3"]),
            "two": (launch, ["train.max_steps=3"]),
            "one-5": ([sys.executable, "-m", "vlgen", "train"], ["train.max_steps=5"])}
    for name, (command, extra) in runs.items():
        result = run_launch([*command, *args, *(a for e in extra for a in ("--set", e)),
                             "--set", f"logging.output_dir={tmp_path / name}"], env)
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "two/checkpoints/step-0000003/rng-1.pt").is_file()  # a second process took part
    one, two = weights(tmp_path / "one/checkpoints/step-0000003"), weights(tmp_path / "two/checkpoints/step-0000003")
    print("largest difference:", max((one[n] - two[n]).abs().max().item() for n in one))
    assert set(one) == set(two)
    start = VisionLLaMADenoiser.from_pretrained(tmp_path / "one/checkpoints/step-0000003/ema")  # moved from init
    assert any(not torch.equal(p, one[n]) for n, p in start.named_parameters())
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-6)

    resumed = run_launch([*launch, *args, "--set", "train.max_steps=5", "--set", f"logging.output_dir={tmp_path / 'two'}",
                          "--resume", "latest"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 3" in resumed.stdout + resumed.stderr
    straight = weights(tmp_path / "one-5/checkpoints/step-0000005")
    continued = weights(tmp_path / "two/checkpoints/step-0000005")
    for name in straight:
        torch.testing.assert_close(continued[name], straight[name], rtol=0, atol=1e-6)


def test_checkpoints_load_on_the_device_names_of_ddp_processes(tmp_path):
    """CPU DDP processes have the device "cpu:0", which safetensors refuses; CUDA ones "cuda:N"."""
    assert checkpoint_module.safetensors_device(torch.device("cpu", 0)) == "cpu"
    assert checkpoint_module.safetensors_device("cpu") == "cpu"
    assert checkpoint_module.safetensors_device(torch.device("cuda", 1)) == "cuda:1"
    run = train(tiny_config(tmp_path, "train.max_steps=1"))
    model = VisionLLaMADenoiser.from_config(run.model.config)
    ema = VisionLLaMADenoiser.from_config(run.model.config)
    optimizer = create_adamw(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rank_zero = SimpleNamespace(device=torch.device("cpu", 0), unwrap_model=lambda m: m, scaler=None, process_index=0)
    step, _ = checkpoint_module.load_checkpoint(rank_zero, latest_checkpoint(tmp_path), model=model, ema=ema,
                                                optimizer=optimizer, scheduler=scheduler)
    assert step == 1
    for name, value in run.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)


def test_export_warns_when_the_ema_still_holds_the_untrained_weights():
    from vlgen.commands.export import ema_warning

    assert "still hold 81% of the untrained initial weights after 2 updates" in ema_warning(2, 0.9)
    assert ema_warning(10, 0.9) is None  # 0.9^10 = 0.35 < 1/e
    assert ema_warning(1000, 0.9999) is not None and ema_warning(20000, 0.9999) is None
