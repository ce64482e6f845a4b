"""Training at GPU-cluster scale, checked on CPU processes (gloo): gradient accumulation, no host
syncs between logging steps, DDP's options, compile after DDP, a simulated two-node launch, the
main process deciding what the file system says, the launcher's settings, the memory estimate."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import run_launch, two_process_launch
from sync_counter import MODEL_CPU_CHECK, counted_syncs
from test_training_loop import TINY, FRAMEWORKS, tiny_config, weights

from vlgen.commands.cli import main
from vlgen.training import train
from vlgen.training.loop import STOP_CHECK_EVERY, Run
from vlgen.training.memory import fit_problem, step_bytes

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TESTS = Path(__file__).resolve().parent
CPU_LAUNCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}


def overrides_as_arguments(*overrides):
    return [*TINY, *FRAMEWORKS["flow"], *overrides]


def assert_same_weights(directory, expected_directory, atol=1e-6):
    got, expected = weights(directory), weights(expected_directory)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=atol)


@pytest.mark.parametrize("framework", ["flow", "ddpm"])
def test_gradient_accumulation_gives_the_unaccumulated_run(tmp_path, framework):
    """4 micro-batches of 2 per step train to the weights of one batch of 8 (the same draws per
    sample), up to float rounding."""
    train(tiny_config(tmp_path / "whole", "train.max_steps=3", framework=framework))
    AcceleratorState._reset_state(reset_partial_state=True)
    run = train(tiny_config(tmp_path / "micro", "train.max_steps=3", "train.gradient_accumulation_steps=4",
                            framework=framework))
    assert run.micro_batch == 2
    assert_same_weights(tmp_path / "micro/checkpoints/step-0000003", tmp_path / "whole/checkpoints/step-0000003")
    losses = [[json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("whole", "micro")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_accumulation_that_does_not_divide_the_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="global_batch_size 8 is not divisible by 1 process.* x "
                                         "train.gradient_accumulation_steps 3"):
        Run(tiny_config(tmp_path, "train.gradient_accumulation_steps=3"), Accelerator(cpu=True))


def step_reads(events):
    """The reads and collectives inside training steps, but for the label check on CPU tensors."""
    return [event for event in events if event[0] == "in" and event[3] != MODEL_CPU_CHECK]


def test_a_step_reads_no_tensor_values_and_only_logging_steps_do(tmp_path, monkeypatch):
    with counted_syncs(monkeypatch) as events:
        train(tiny_config(tmp_path, "train.max_steps=12", "logging.log_every=6", "logging.checkpoint_every=12"))
    assert step_reads(events) == []
    assert {step for phase, step, _, _ in events if phase == "after"} == {6, 12}, events


def test_the_label_check_reads_no_values_off_the_cpu(monkeypatch):
    """The one read of a step on a CPU run: the denoiser checks label values of plain CPU tensors
    only; of tensors elsewhere (here the meta device; a GPU alike) it reads nothing."""
    from vlgen.models import create_model

    with torch.device("meta"):
        model = create_model("DiT-LLaMA-S/2", hidden_size=32, depth=1, num_heads=2, sample_size=8, num_classes=10)
        inputs = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([3, 4])
    reads = []
    for name in ("__int__", "item", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: reads.append(_n) or _o(self, *a))
    model(*inputs)
    assert reads == []


def launch_training(out, *overrides, resume="none", processes=2, env=None):
    """The two-process launch of launched_training.py; returns each process's report."""
    command = [*two_process_launch(), str(TESTS / "launched_training.py"), str(out / "reports"), resume,
               *overrides_as_arguments(f"logging.output_dir={out}", *overrides)]
    if processes != 2:
        command[command.index("--num_processes") + 1] = str(processes)
    result = run_launch(command, {**CPU_LAUNCH_ENV, **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / "reports" / f"rank-{rank}.json").read_text()) for rank in range(processes)]


@pytest.mark.slow
def test_two_processes_with_micro_batches_equal_one_process_and_sync_only_at_check_steps(tmp_path):
    """2 processes x 2 micro-batches of 2 train to the weights of one process on batches of 8; the
    steps themselves read no tensor value and call no collective: the stop request is agreed every
    STOP_CHECK_EVERY steps (and at logging and checkpoint steps), on the CPU side channel."""
    steps = ["train.max_steps=12", "logging.log_every=12", "logging.checkpoint_every=12"]
    train(tiny_config(tmp_path / "one", *steps))
    reports = launch_training(tmp_path / "two", *steps, "train.gradient_accumulation_steps=2")
    assert_same_weights(tmp_path / "two/checkpoints/step-0000012", tmp_path / "one/checkpoints/step-0000012")
    for report in reports:
        assert report["wrapper"] == "DistributedDataParallel" and report["gradient_as_bucket_view"] is True
        assert report["static_graph"] is False  # DDP's static graph does not take no_sync
        assert step_reads(report["events"]) == []
        assert {step for phase, step, _, _ in report["events"] if phase == "after"} == {STOP_CHECK_EVERY, 12}
        at_check = [what for phase, step, what, _ in report["events"] if phase == "after" and step == STOP_CHECK_EVERY]
        assert at_check == ["all_reduce", "item"], at_check  # one CPU all-reduce (gloo), read on the host


@pytest.mark.slow
def test_ddp_runs_a_static_graph_and_compresses_gradients_on_request(tmp_path):
    reports = launch_training(tmp_path, "train.max_steps=2", "train.gradient_compression=bf16")
    for report in reports:
        assert report["static_graph"] is True and report["comm_hook"] == "bf16_compress_hook"
        assert report["step"] == 2
    assert all(torch.isfinite(value).all() for value in weights(tmp_path / "checkpoints/step-0000002").values())


def test_compile_wraps_the_model_after_ddp(tmp_path, monkeypatch):
    """In place, on what accelerate returns: the DDP wrapper on several processes (dynamo then splits
    the graph at DDP's buckets), the model itself on one."""
    class Wrapper(torch.nn.Module):  # stands for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

    monkeypatch.setattr(Accelerator, "prepare", lambda self, model, optimizer: (Wrapper(model), optimizer))
    run = Run(tiny_config(tmp_path, "model.compile=true"), Accelerator(cpu=True))
    assert isinstance(run.model, Wrapper) and run.model._compiled_call_impl is not None
    assert run.model.module._compiled_call_impl is None  # the inner model is not compiled on its own


def two_node_launch(out, tmp_path, *overrides, resume="none", env=None, timeout=240):
    """`accelerate launch --num_machines 2` twice, machine ranks 0 and 1 on 127.0.0.1 (one process
    each, gloo), each "node" with a temporary directory of its own and the output shared; a launch
    that does not end fails with every process's stacks."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launchers = []
    for rank in range(2):
        local = tmp_path / f"node{rank}"
        local.mkdir(exist_ok=True)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                   "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
                   str(TESTS / "launched_training.py"), str(out / "reports"), resume,
                   *overrides_as_arguments(f"logging.output_dir={out}", *overrides)]
        launchers.append(subprocess.Popen(command, env={**CPU_LAUNCH_ENV, "TMPDIR": str(local), "PYTHONFAULTHANDLER": "1",
                                                        **(env or {})},
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
    outputs = []
    for launcher in launchers:
        try:
            outputs.append(launcher.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for other in launchers:
                os.killpg(other.pid, signal.SIGABRT)
            stacks = "\n".join(other.communicate()[1][-6000:] for other in launchers)
            pytest.fail(f"a two-node launch did not end in {timeout} s; its stacks:\n{stacks}")
    for launcher, (_, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-4000:]
    return [json.loads((out / "reports" / f"rank-{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
def test_two_simulated_nodes_train_resume_and_exit_like_one_process(tmp_path):
    """Two "nodes" sharing the output: their checkpoints equal a one-process run's; resumed while the
    second node's view of the shared directory lags (it lists only the oldest checkpoint), both
    continue from the main process's choice and end on the uninterrupted run's weights."""
    every = ["logging.checkpoint_every=2", "logging.log_every=2"]
    train(tiny_config(tmp_path / "one", "train.max_steps=6", *every))
    two_node_launch(tmp_path / "two", tmp_path, "train.max_steps=4", *every)
    assert_same_weights(tmp_path / "two/checkpoints/step-0000004", tmp_path / "one/checkpoints/step-0000004")
    reports = two_node_launch(tmp_path / "two", tmp_path, "train.max_steps=6", *every, resume="latest",
                              env={"STALE_VIEW_RANK": "1"})
    assert [report["step"] for report in reports] == [6, 6]
    assert_same_weights(tmp_path / "two/checkpoints/step-0000006", tmp_path / "one/checkpoints/step-0000006")


@pytest.mark.slow
def test_an_fsdp_launch_is_refused_up_front(tmp_path):
    command = [*two_process_launch(), "-m", "vlgen", "train", "--set", f"logging.output_dir={tmp_path}"]
    command[command.index("--multi_gpu")] = "--use_fsdp"
    result = run_launch(command, CPU_LAUNCH_ENV)
    assert result.returncode != 0
    assert "vlgen train: error: the launcher selects FSDP, which vlgen train does not run" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_a_deepspeed_launch_is_refused_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch --use_deepspeed sets
    assert main(["train", "--set", f"logging.output_dir={tmp_path}"]) == 2
    assert "vlgen train: error: the launcher selects DeepSpeed, which vlgen train does not run" in capsys.readouterr().err


def test_a_tracker_that_is_not_installed_is_named_with_its_package(tmp_path, capsys):
    code = main(["train", "--set", "logging.tracker=wandb", "--set", f"logging.output_dir={tmp_path}"])
    assert code == 2
    assert "logging.tracker=wandb needs the wandb package: pip install wandb" in capsys.readouterr().err


def test_the_memory_estimate_tells_when_a_step_will_not_fit():
    from vlgen.models import create_model

    def build():
        return create_model("DiT-LLaMA-S/2", sample_size=16)

    params = sum(p.numel() for p in build().parameters())
    plain = step_bytes(build, params, (8, 4, 16, 16), "bf16")
    checkpointed = step_bytes(build, params, (8, 4, 16, 16), "bf16", checkpointing=True)
    half, double = (step_bytes(build, params, (n, 4, 16, 16), "bf16")["activations"] for n in (4, 16))
    assert plain["states"] == params * 20 and checkpointed["activations"] < plain["activations"] / 3
    # per-sample activations plus the bf16 weight copies that autocast keeps once: affine in the batch
    assert double - plain["activations"] == 2 * (plain["activations"] - half)
    assert fit_problem(plain, plain["total"], 8, 1, False) is None
    problem = fit_problem(plain, plain["states"] + plain["activations"] // 3, 8, 1, False)
    assert "more than the device's" in problem and "model.gradient_checkpointing: true" in problem
    factor = int(re.search(r"train.gradient_accumulation_steps: (\d+) \(micro-batches of about", problem).group(1))
    assert factor in (3, 4)  # a third of the activations' room: 3 micro-batches, 4 with the batch-independent part


def test_bf16_autocast_keeps_the_residual_stream_float32_and_stores_no_float32_copy_of_the_matmul_inputs():
    """Under autocast the block output (the residual stream) is float32, as in DiT; what autograd
    keeps of the normalised and modulated tokens is bf16."""
    from vlgen.models import create_model

    model = create_model("DiT-LLaMA-S/2", hidden_size=64, depth=1, num_heads=2, sample_size=8, num_classes=10)
    saved = []
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(
            lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        tokens = model.blocks[0](torch.randn(2, 16, 64, requires_grad=True), torch.randn(2, 64), model.rope(4, 4, "cpu"))
    assert tokens.dtype == torch.float32
    activations = [tensor for tensor in saved if tensor.shape == (2, 16, 64)]
    float32 = [tensor for tensor in activations if tensor.dtype == torch.float32]
    assert len(float32) == 2  # the two LayerNorms' inputs: the float32 residual stream itself
    assert len(activations) - len(float32) >= 4  # the modulated tokens, kept in bf16


def test_a_latent_runs_vae_is_loaded_before_the_first_step(tmp_path, capsys):
    """The VAE that decodes the grids is loaded at start: a missing one fails the run before it
    trains, not at its first grid (steps later, on a node without internet say)."""
    import shutil

    from conftest import tiny_vae, write_image_folder

    from vlgen.data.latents import extract_latents

    tiny_vae(tmp_path / "vae")
    extract_latents(Accelerator(cpu=True), write_image_folder(tmp_path / "data", per_class=2), str(tmp_path / "vae"),
                    tmp_path / "latents", resolution=12)
    shutil.rmtree(tmp_path / "vae")
    arguments = [a for o in overrides_as_arguments("model.name=SiT-LLaMA-S/2", "data.kind=latents",
                                                   f"data.path={tmp_path / 'latents'}", "logging.sample_every=50",
                                                   f"logging.output_dir={tmp_path / 'run'}") for a in ("--set", o)]
    assert main(["train", *arguments]) == 2
    assert str(tmp_path / "vae") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_training_grids_sample_in_the_runs_precision(tmp_path):
    from vlgen.commands.train import grid_sampler

    run = train(tiny_config(tmp_path, "train.max_steps=1", 'train.mixed_precision="bf16"', "logging.sample_steps=2"))
    dtypes = []
    run.ema.blocks[0].attn.qkv.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    grid_sampler()(run)
    assert (tmp_path / "samples" / "step-0000001.png").is_file()
    assert dtypes and set(dtypes) == {torch.bfloat16}


@pytest.mark.parametrize("tf32, expected", [(True, "tf32"), (False, "ieee")])
def test_train_tf32_sets_the_float32_matmul_precision(tmp_path, tf32, expected):
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        train(tiny_config(tmp_path, "train.max_steps=1", f"train.tf32={str(tf32).lower()}"))
        assert (matmul.fp32_precision, conv.fp32_precision) == (expected, expected)
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_a_run_says_when_its_step_will_not_fit_the_device(tmp_path):
    """The check a CUDA run makes at start, here with a capacity given: the estimate of this
    run's micro-batch against it."""
    run = Run(tiny_config(tmp_path, "train.gradient_accumulation_steps=2"), Accelerator(cpu=True))
    assert run.memory_problem(2**40) is None
    problem = run.memory_problem(2**20)
    assert "a training step needs at least" in problem and "activations of a micro-batch of 4" in problem
