"""Training runs that never lose or mix work: ownership of the output, refused re-runs, a graceful
stop on SIGTERM / SIGINT, metrics that a resumed run logs exactly as an uninterrupted one."""
import json
import os
import signal

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import Interrupted, interrupt_training_after
from test_training_loop import tiny_config

from vlgen.commands.cli import main
from vlgen.core.ownership import LOCK_FILE, owned
from vlgen.core.signals import Stopped
from vlgen.training import train
from vlgen.training.checkpoint import list_checkpoints
from vlgen.training.loop import Run


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each test starts without accelerate's state


def records(directory):
    """metrics.jsonl without its timing column, which no two runs share."""
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def signal_at(monkeypatch, step, *signums):
    """Send the signals to this process during step `step` (as a scheduler or Ctrl-C would)."""
    original = Run.train_step

    def train_step(self, batch):
        if self.step == step - 1:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return original(self, batch)

    monkeypatch.setattr(Run, "train_step", train_step)


def test_a_second_run_into_a_directory_that_holds_a_run_is_refused_with_the_ways_forward(tmp_path):
    first = train(tiny_config(tmp_path, "train.max_steps=2"))
    before = (tmp_path / "metrics.jsonl").read_text()
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"already holds a training run \(checkpoints up to step-0000002\); "
                                         r"continue it with --resume latest, or train into a new directory"):
        train(tiny_config(tmp_path, "train.max_steps=4"))
    assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing was truncated or overwritten
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002"] and first.step == 2


def test_a_run_that_died_before_its_first_checkpoint_also_needs_resume(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")  # what a run that died at its first steps leaves
    with pytest.raises(ValueError, match="stopped before its first checkpoint"):
        train(tiny_config(tmp_path, "train.max_steps=2"))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train(tiny_config(tmp_path, "train.max_steps=2"), resume="latest").step == 2


def test_an_output_in_use_is_refused_naming_its_holder_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    with owned(tmp_path, command="vlgen train --config other.yaml"):
        with pytest.raises(ValueError, match=r"is in use by process \d+ on .*vlgen train --config other.yaml"):
            train(tiny_config(tmp_path, "train.max_steps=1"))
    assert not list_checkpoints(tmp_path)
    # A holder that died without releasing: its record stays in the file, the lock itself is free.
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "vlgen train",
                                                  "started": 0}))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train(tiny_config(tmp_path, "train.max_steps=1")).step == 1
    assert "took over" in capsys.readouterr().err and "process 999999 on gone" not in (tmp_path / LOCK_FILE).read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_resumed_run_is_exact(tmp_path, monkeypatch, signum):
    overrides = ["train.max_steps=9", "logging.checkpoint_every=4", "logging.log_every=3"]
    handler = signal.getsignal(signum)  # SIG_IGN for SIGINT in a background job
    straight = train(tiny_config(tmp_path / "straight", *overrides))
    AcceleratorState._reset_state(reset_partial_state=True)
    with monkeypatch.context() as patch:
        signal_at(patch, 6, signum)
        with pytest.raises(Stopped, match=r"stopped by SIG\w+ after step 6; checkpoint .*step-0000006; continue with "
                                          r"--resume latest") as stopped:
            train(tiny_config(tmp_path / "stopped", *overrides))
    assert stopped.value.exit_code == 128 + signum
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["step-0000004", "step-0000006"]
    assert signal.getsignal(signum) == handler  # handlers restored
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train(tiny_config(tmp_path / "stopped", *overrides), resume="latest")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    # Step 6 is inside the window 4..6 of the record at step 6 and the checkpoint at 6 falls between
    # records 3 and 6 of log_every 3 with checkpoint_every 4: the windows were carried over exactly.
    assert records(tmp_path / "stopped") == records(tmp_path / "straight")


def test_a_second_signal_stops_at_once(tmp_path, monkeypatch):
    signal_at(monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "train.max_steps=6", "logging.checkpoint_every=5"))
    assert not list_checkpoints(tmp_path)


def test_ctrl_c_during_a_checkpoint_save_leaves_no_temporary_behind(tmp_path, monkeypatch):
    from vlgen.training import checkpoint as checkpoint_module

    real_save = checkpoint_module.torch.save

    def interrupted_save(obj, path, *args, **kwargs):
        if "optimizer" in str(path):
            raise KeyboardInterrupt  # Ctrl-C (a second one) in the middle of writing the checkpoint
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "train.max_steps=2", "logging.checkpoint_every=2"))
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no .step-0000002.*.tmp


def test_the_cli_reports_a_stop_in_one_line_with_the_signal_exit_code(tmp_path, monkeypatch, capsys):
    signal_at(monkeypatch, 2, signal.SIGTERM)
    code = main(["train", "--set", "model.hidden_size=32", "--set", "model.depth=1", "--set", "data.num_samples=64",
                 "--set", "data.num_workers=0", "--set", "train.global_batch_size=4", "--set", "train.max_steps=5",
                 "--set", "logging.tracker=null", "--set", "logging.sample_every=0", "--set",
                 f"logging.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 143
    assert "vlgen train: stopped by SIGTERM after step 2" in err and "Traceback" not in err


def test_checkpoints_inside_a_log_window_give_the_same_records_after_resume(tmp_path, monkeypatch):
    """checkpoint_every 3, log_every 5: the record at step 5 averages steps 1-5, of which 1-3 ran
    before the checkpoint the run resumes from."""
    overrides = ["train.max_steps=10", "logging.checkpoint_every=3", "logging.log_every=5"]
    train(tiny_config(tmp_path / "straight", *overrides))
    AcceleratorState._reset_state(reset_partial_state=True)
    with monkeypatch.context() as patch:
        interrupt_training_after(patch, 4)  # dies in step 5: the newest checkpoint is step 3
        with pytest.raises(Interrupted):
            train(tiny_config(tmp_path / "killed", *overrides))
    AcceleratorState._reset_state(reset_partial_state=True)
    train(tiny_config(tmp_path / "killed", *overrides), resume="latest")
    assert records(tmp_path / "killed") == records(tmp_path / "straight")


def test_a_torn_last_metrics_line_is_repaired_with_a_warning_naming_the_file(tmp_path):
    train(tiny_config(tmp_path, "train.max_steps=4", "logging.checkpoint_every=4", "logging.log_every=2"))
    metrics = tmp_path / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 5, "lo')  # a crash while appending
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped a torn last line"):
        train(tiny_config(tmp_path, "train.max_steps=6", "logging.checkpoint_every=4", "logging.log_every=2"),
              resume="latest")
    assert [r["step"] for r in records(tmp_path)] == [2, 4, 6]
    metrics.write_text('{"step": 2}\nnot json\n{"step": 4}\n')
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON record"):
        train(tiny_config(tmp_path, "train.max_steps=8", "logging.checkpoint_every=4"), resume="latest")


def test_a_config_with_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  lr: [1e-4\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlgen train: error: config file {config} is not valid YAML (line ") and err.count("\n") == 1
