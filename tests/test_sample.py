"""`vlgen sample`: sharded sampling to an ADM-format npz, resume, grids, and its errors."""
import os
import shutil
import signal
import sys

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import run_launch, two_process_launch
from PIL import Image
from test_pipelines import tiny_pipeline

from vlgen.commands import sample as sample_module
from vlgen.commands.cli import main

class Killed(Exception):
    """Stands for the process being killed mid-run."""


ARGS = ["--num-samples", "11", "--batch-size", "4", "--num-inference-steps", "3"]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each test starts without accelerate's state


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "ddpm"
    tiny_pipeline("ddpm").save_pretrained(path)
    return path


def run(pipeline_dir, *args):
    return main(["sample", "--pipeline", str(pipeline_dir), *args])


def test_npz_is_adm_format_with_balanced_labels(pipeline_dir, tmp_path):
    out = tmp_path / "samples.npz"
    assert run(pipeline_dir, *ARGS, "--out", str(out)) == 0
    data = np.load(out)
    assert data["arr_0"].shape == (11, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [i % 10 for i in range(11)]
    assert not (tmp_path / "samples.npz.parts").exists()  # the batches are gone once the npz is complete
    assert len({data["arr_0"][i].tobytes() for i in range(11)}) == 11  # every sample has its own noise


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(pipeline_dir, tmp_path, monkeypatch):
    run(pipeline_dir, *ARGS, "--out", str(tmp_path / "whole.npz"))
    AcceleratorState._reset_state(reset_partial_state=True)

    generate, calls, kill_at = sample_module.generate, [], [2]

    def interrupted(*args):
        calls.append(args[2])
        if len(calls) in kill_at:
            raise Killed  # while sampling the second batch
        return generate(*args)

    monkeypatch.setattr(sample_module, "generate", interrupted)
    out = tmp_path / "resumed.npz"
    with pytest.raises(Killed):
        run(pipeline_dir, *ARGS, "--out", str(out))
    parts = tmp_path / "resumed.npz.parts"
    assert sorted(p.name for p in parts.glob("batch-*.npz")) == ["batch-000000.npz"] and not out.exists()
    (parts / ".batch-000001.tmp.npz").write_bytes(b"half written")  # a batch cut off mid-write is redone
    AcceleratorState._reset_state(reset_partial_state=True)
    calls.clear()
    kill_at.clear()
    assert run(pipeline_dir, *ARGS, "--out", str(out)) == 0
    assert [list(indices) for indices in calls] == [[4, 5, 6, 7], [8, 9, 10]]  # only the missing batches
    whole, resumed = np.load(tmp_path / "whole.npz"), np.load(out)
    assert np.array_equal(whole["arr_0"], resumed["arr_0"]) and np.array_equal(whole["arr_1"], resumed["arr_1"])


def _killed_after_first_batch(monkeypatch, pipeline_dir, out):
    generate = sample_module.generate
    calls = []

    def dies_on_the_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return generate(*args)

    with monkeypatch.context() as patch:
        patch.setattr(sample_module, "generate", dies_on_the_second_batch)
        with pytest.raises(Killed):
            run(pipeline_dir, *ARGS, "--out", str(out))
    AcceleratorState._reset_state(reset_partial_state=True)


def test_resuming_with_other_settings_is_refused_naming_them(pipeline_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.npz"
    _killed_after_first_batch(monkeypatch, pipeline_dir, out)
    assert run(pipeline_dir, *ARGS, "--seed", "1", "--guidance-scale", "2", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "other settings (guidance_scale: 1.5 there, 2.0 now; seed: 0 there, 1 now)" in err, err


def test_a_changed_pipeline_at_the_same_path_is_refused(pipeline_dir, tmp_path, monkeypatch, capsys):
    """The parts are keyed by the pipeline's file hashes, not its path: other weights exported to
    the same directory would mix two models in one npz."""
    copy = tmp_path / "pipe"
    shutil.copytree(pipeline_dir, copy)
    out = tmp_path / "s.npz"
    _killed_after_first_batch(monkeypatch, copy, out)
    shutil.rmtree(copy)
    other = tiny_pipeline("ddpm")
    with torch.no_grad():
        for param in other.transformer.parameters():
            param.add_(0.01)
    other.save_pretrained(copy)  # other weights, same path
    assert run(copy, *ARGS, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "the pipeline's files (transformer/diffusion_pytorch_model.safetensors)" in err, err


def test_sigterm_stops_after_the_current_batch_and_the_same_command_resumes(pipeline_dir, tmp_path, monkeypatch,
                                                                          capsys):
    run(pipeline_dir, *ARGS, "--out", str(tmp_path / "whole.npz"))
    AcceleratorState._reset_state(reset_partial_state=True)
    generate, calls = sample_module.generate, []

    def preempted(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler preempts during the second batch
        return generate(*args)

    out = tmp_path / "resumed.npz"
    with monkeypatch.context() as patch:
        patch.setattr(sample_module, "generate", preempted)
        assert run(pipeline_dir, *ARGS, "--out", str(out)) == 143
    assert "vlgen sample: stopped by SIGTERM with 2 of 3 batches" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "resumed.npz.parts").glob("batch-*")) == ["batch-000000.npz",
                                                                                         "batch-000001.npz"]
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run(pipeline_dir, *ARGS, "--out", str(out)) == 0
    assert (tmp_path / "whole.npz").read_bytes() == out.read_bytes()


def test_a_run_that_failed_before_its_first_batch_blocks_nothing(pipeline_dir, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert run(pipeline_dir, *ARGS, "--option", "atoll=1", "--out", str(out)) == 2  # fails in the first batch
    assert "unknown option" in capsys.readouterr().err
    assert not (tmp_path / "s.npz.parts").exists()
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run(pipeline_dir, *ARGS, "--out", str(out)) == 0
    assert run(tmp_path / "missing", *ARGS, "--out", str(tmp_path / "t.npz")) == 2  # before anything is made
    assert not (tmp_path / "t.npz.parts").exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(pipeline_dir, tmp_path, capsys):
    from vlgen.core.ownership import owned

    out = tmp_path / "s.npz"
    with owned(tmp_path / "s.npz.parts", command="vlgen sample (the first run)"):
        assert run(pipeline_dir, *ARGS, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "s.npz.parts is in use by process" in err and "vlgen sample (the first run)" in err
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run(pipeline_dir, *ARGS, "--out", str(out)) == 0  # released


def test_a_damaged_part_is_named_with_the_fix(pipeline_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.npz"
    _killed_after_first_batch(monkeypatch, pipeline_dir, out)
    part = tmp_path / "s.npz.parts" / "batch-000000.npz"
    part.write_bytes(part.read_bytes()[:100])  # cut short on disk after it was written
    assert run(pipeline_dir, *ARGS, "--out", str(out)) == 2
    assert "batch-000000.npz is damaged; delete it and run the same command again" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--num-samples", "0", "--out", "{tmp}/a.npz"], "--num-samples must be a positive integer, got 0"),
    (["--batch-size", "-2", "--out", "{tmp}/a.npz"], "--batch-size must be a positive integer"),
    (["--out", "{tmp}/a.png"], "must end in .npz"),
    ([], "give exactly one of --out"),
    (["--grid", "{tmp}/g.png", "--labels", "cirle"], "unknown label name 'cirle'; did you mean 'circle'"),
    (["--grid", "{tmp}/g.png", "--labels", "10"], "out of range: ids are integers in [0, 9]"),
    (["--out", "{tmp}/a.npz", "--option", "atoll=1"], "unknown option"),
    (["--out", "{tmp}/a.npz", "--option", "atoll"], "not of the form key=value"),
])
def test_bad_arguments_exit_2_naming_the_problem(pipeline_dir, tmp_path, capsys, args, message):
    assert run(pipeline_dir, *[a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_num_samples_must_be_an_integer(pipeline_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(pipeline_dir, "--num-samples", "1e3", "--out", str(tmp_path / "a.npz"))
    assert exit_info.value.code == 2 and "invalid int value: '1e3'" in capsys.readouterr().err


def test_an_existing_output_is_never_overwritten_without_the_flag(pipeline_dir, tmp_path, capsys):
    out = tmp_path / "s.npz"
    out.write_bytes(b"finished run")
    assert run(pipeline_dir, *ARGS, "--out", str(out)) == 2
    assert "pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"finished run"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run(pipeline_dir, *ARGS, "--out", str(out), "--overwrite") == 0
    assert np.load(out)["arr_0"].shape[0] == 11


def test_grid_has_a_row_per_label_and_shows_the_sampler_steps(pipeline_dir, tmp_path, capsys):
    path = tmp_path / "grid.png"
    assert run(pipeline_dir, "--grid", str(path), "--labels", "circle", "box", "7", "--per-label", "3",
               "--num-inference-steps", "2") == 0
    progress = capsys.readouterr().err
    assert "DDPM" in progress and "/2" in progress  # the sampler's step bar, not a "1/1 batch" bar
    assert "batch" not in progress
    width, height = Image.open(path).size
    assert height == 3 * (16 + 2) + 2 and width > 3 * (16 + 2)


@pytest.mark.slow
def test_two_processes_write_the_same_npz_as_one(pipeline_dir, tmp_path):
    """accelerate launch with two CPU processes (torchrun, gloo) vs one process: identical bytes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    commands = {"one": [sys.executable, "-m", "vlgen", "sample"], "two": [*two_process_launch(), "-m", "vlgen", "sample"]}
    for name, command in commands.items():
        result = run_launch([*command, "--pipeline", str(pipeline_dir), *ARGS, "--out", str(tmp_path / f"{name}.npz")],
                            env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"11 images from {1 if name == 'one' else 2} process" in result.stdout
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])
