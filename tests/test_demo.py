"""`vlgen demo` end to end, reduced to a few steps: every artefact is written and consistent."""
import json

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import Interrupted, interrupt_training_after
from PIL import Image

from vlgen.pipelines import load_pipeline
from vlgen.commands.cli import main
from vlgen.data.shapes import CLASS_NAMES
from vlgen.training import load_config


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each test starts without accelerate's state


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["sit", "dit"])
def test_a_reduced_demo_writes_every_artefact(tmp_path, framework, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--framework", framework, "--steps", "30", "--classifier-steps", "20",
            "--samples-per-class", "3", "--mixed-precision", "no"]
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert "generated class accuracy" in summary and "judge-feature Frechet distance" in summary

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["framework"] == framework and metrics["steps"] == 30
    assert metrics["model"] == ("SiT-LLaMA-S/2" if framework == "sit" else "DiT-LLaMA-S/2")
    assert 0.0 <= metrics["generated_class_accuracy"] <= 1.0 and 0.0 <= metrics["judge_held_out_accuracy"] <= 1.0
    assert set(metrics["generated_per_class_accuracy"]) == set(CLASS_NAMES)
    assert metrics["judge_feature_frechet_distance"] >= 0.0
    assert metrics["judge_feature_frechet_distance_real_vs_real"] >= 0.0
    assert metrics["last_loss"] < metrics["first_loss"]

    grid = Image.open(out / "grid.png")
    assert grid.width > 3 * 64 and grid.height >= len(CLASS_NAMES) * 64  # 10 labelled rows of 3 upscaled samples
    assert Image.open(out / "loss.png").size[0] > 100
    pipe = load_pipeline(out / "pipeline")
    assert type(pipe).__name__ == ("SiTLLaMAPipeline" if framework == "sit" else "DiTLLaMAPipeline")
    assert pipe.config.id2label[0] == CLASS_NAMES[0]
    assert (out / "classifier" / "metrics.json").is_file()
    assert (out / "run" / "metrics.jsonl").is_file()
    run_config = load_config(out / "run" / "config.yaml")
    assert run_config.objective.kind == metrics["objective"] == ("flow" if framework == "sit" else "ddpm")
    if framework == "sit":
        assert run_config.objective.time_sampling == "logit-normal"
    else:
        assert run_config.objective.noise_schedule == "cosine" and pipe.config.process["noise_schedule"] == "cosine"

    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(args) == 2  # a non-empty --out is kept unless --overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def test_bad_demo_arguments_are_clear_errors(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--samples-per-class", "1"]) == 2
    assert "--samples-per-class must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--resolution", "24"])


@pytest.mark.slow
def test_an_interrupted_demo_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from vlgen.commands import demo

    monkeypatch.setattr(demo, "CHECKPOINT_EVERY", 10)
    args = ["--framework", "sit", "--steps", "30", "--classifier-steps", "20", "--samples-per-class", "2",
            "--mixed-precision", "no"]
    assert main(["demo", "--out", str(tmp_path / "straight"), *args]) == 0

    AcceleratorState._reset_state(reset_partial_state=True)
    with monkeypatch.context() as patch:
        interrupt_training_after(patch, 25)
        with pytest.raises(Interrupted):
            main(["demo", "--out", str(tmp_path / "killed"), *args])
    assert not (tmp_path / "killed" / "metrics.json").exists()
    assert [p.name for p in (tmp_path / "killed" / "run" / "checkpoints").iterdir()] == ["step-0000020"]  # kept: 1
    capsys.readouterr()

    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["demo", "--out", str(tmp_path / "killed"), *args[:2], "--steps", "40", *args[4:]]) == 2
    assert "unfinished demo with other settings (steps: 30 there, 40 now)" in capsys.readouterr().err
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["demo", "--out", str(tmp_path / "killed"), *args]) == 0
    printed = capsys.readouterr().out
    assert "resuming the unfinished demo" in printed and "denoiser from step 20 of 30" in printed
    assert "judge: loaded from" in printed and "resumed from step 20" in printed

    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["resumed"] == {"judge": True, "denoiser_from_step": 20}
    straight = load_file(str(tmp_path / "straight/pipeline/transformer/diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(tmp_path / "killed/pipeline/transformer/diffusion_pytorch_model.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    lines = (tmp_path / "killed/run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [25, 30]  # log_every 25: no record lost or repeated
    straight_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["generated_class_accuracy"] == straight_metrics["generated_class_accuracy"]
