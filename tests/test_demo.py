"""`vlgen demo` end to end, reduced to a few steps: every artefact is written and consistent."""
import json

import pytest
from accelerate.state import AcceleratorState
from PIL import Image

from pipelines import load_pipeline
from vlgen.commands.cli import main
from vlgen.training import load_config
from vlgen.data.shapes import CLASS_NAMES


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


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
        assert run_config.objective.noise_schedule == "cosine" and pipe.scheduler.config.noise_schedule == "cosine"

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
