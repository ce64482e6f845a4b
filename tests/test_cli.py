"""The installed `vlgen` console script."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_vae, write_image_folder

VLGEN = str(Path(sys.executable).parent / "vlgen")


def run(*args):
    return subprocess.run([VLGEN, *args], capture_output=True, text=True)


@pytest.mark.slow
def test_models_lists_every_name_with_its_count():
    result = run("models")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert len(lines) == 48
    # 675,129,632 in the reference count, less its frozen 256 x 1152 sin-cos table.
    assert lines["DiT-XL/2"] == f"{675_129_632 - 256 * 1152:,}"


@pytest.mark.slow
def test_unknown_model_is_a_clear_error():
    result = run("train", "--set", "model.name=DiT-LLaMA-XXL/2")
    assert result.returncode == 2
    assert "unknown model 'DiT-LLaMA-XXL/2'" in result.stderr


TINY_RUN = ["--set", "model.hidden_size=32", "--set", "model.depth=1", "--set", "model.num_heads=2",
            "--set", "data.resolution=16", "--set", "data.num_workers=0", "--set", "train.global_batch_size=4",
            "--set", "train.max_steps=2", "--set", "logging.sample_every=2", "--set", "logging.sample_steps=2",
            "--set", "logging.tracker=null"]


@pytest.mark.slow
def test_train_then_export(tmp_path):
    result = run("train", *TINY_RUN, "--set", f"logging.output_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "mixed precision: " in result.stderr and "(auto: this CPU runs matmul and attention at" in result.stderr
    assert "threads: " in result.stderr and " usable CPUs" in result.stderr
    assert (tmp_path / "run" / "samples" / "step-0000002.png").is_file()
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000002"
    result = run("export", str(checkpoint), "--out", str(tmp_path / "pipe"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pipe" / "transformer" / "config.json").is_file()
    result = run("export", str(checkpoint), "--out", str(tmp_path / "pipe"))
    assert result.returncode == 2 and "pass --overwrite" in result.stderr
    result = run("sample", "--pipeline", str(tmp_path / "pipe"), "--grid", str(tmp_path / "grid.png"),
                 "--labels", "circle", "star", "--per-label", "2", "--num-inference-steps", "2",
                 "--sampler", "ode", "--option", "method=euler")
    assert result.returncode == 0, result.stderr
    assert "2 labels x 2 images" in result.stdout and (tmp_path / "grid.png").is_file()
    result = run("sample", "--pipeline", str(tmp_path / "pipe"), "--grid", str(tmp_path / "euler.png"),
                 "--labels", "circle", "--per-label", "2", "--num-inference-steps", "3", "--sampler", "flow-euler")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "euler.png").is_file()
    result = run("sample", "--pipeline", str(tmp_path / "pipe"), "--grid", str(tmp_path / "bad.png"),
                 "--sampler", "dpm-solver++")
    assert result.returncode == 2 and "unknown sampler 'dpm-solver++'" in result.stderr
    result = run("sample", "--pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "s.npz"), "--num-samples",
                 "3", "--num-inference-steps", "2", "--sampler", "ode", "--option", "method=euler", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "3 images from 1 process" in result.stdout and (tmp_path / "s.npz").is_file()


@pytest.mark.slow
def test_train_config_errors_exit_2_naming_the_key(tmp_path):
    result = run("train", "--set", "train.lrr=1")
    assert result.returncode == 2 and "unknown config key train.lrr" in result.stderr
    result = subprocess.run([sys.executable, "-m", "vlgen", "train", "--config", str(tmp_path / "none.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "none.yaml not found" in result.stderr


@pytest.mark.slow
def test_extract_latents_command(tmp_path):

    tiny_vae(tmp_path / "vae")
    root = write_image_folder(tmp_path / "data", per_class=1)
    result = subprocess.run([sys.executable, "-m", "vlgen", "extract-latents", str(root), "--out",
                             str(tmp_path / "latents"), "--vae", str(tmp_path / "vae"), "--resolution", "16",
                             "--num-workers", "0"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "3 images -> latents (4, 8, 8)" in result.stdout
    result = run("extract-latents", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--vae",
                 str(tmp_path / "vae"))
    assert result.returncode == 2 and "missing does not exist" in result.stderr


@pytest.mark.slow
def test_train_classifier_on_shapes_and_on_an_image_folder(tmp_path):

    from vlgen.tasks import VisionLLaMAClassifier

    tiny = ["--steps", "3", "--batch-size", "4", "--hidden-size", "32", "--depth", "1", "--num-heads", "2"]
    result = run("train-classifier", *tiny, "--out", str(tmp_path / "shapes"))
    assert result.returncode == 0, result.stderr
    assert "held-out accuracy" in result.stdout
    metrics = json.loads((tmp_path / "shapes" / "metrics.json").read_text())
    assert 0 <= metrics["held_out_accuracy"] <= 1 and len(metrics["class_names"]) == 10
    assert VisionLLaMAClassifier.from_pretrained(tmp_path / "shapes").head.out_features == 10
    result = run("train-classifier", *tiny, "--out", str(tmp_path / "shapes"))
    assert result.returncode == 2 and "pass --overwrite" in result.stderr and "%|" not in result.stderr  # refused before training
    folder = write_image_folder(tmp_path / "images", per_class=2)
    result = run("train-classifier", *tiny, "--data", str(folder), "--eval-data", str(folder), "--image-size", "16",
                 "--out", str(tmp_path / "folder"))
    assert result.returncode == 0, result.stderr
    classes = json.loads((tmp_path / "folder" / "metrics.json").read_text())["class_names"]
    assert classes == sorted(p.name for p in folder.iterdir())


def test_help_answers_without_importing_torch():
    probe = ("import sys; from vlgen.commands.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'diffusers', 'accelerate', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for command in ([], ["train"], ["sample"], ["demo"]):
        help_text = run(*command, "--help")
        assert help_text.returncode == 0 and "usage: vlgen" in help_text.stdout


def test_the_parsers_choices_are_the_commands_own():
    from vlgen.commands import defaults, demo

    assert set(defaults.DEMO_FRAMEWORKS) == set(demo.FRAMEWORKS)


def test_errors_are_one_line_naming_the_traceback_switch_which_shows_the_full_one(capsys, monkeypatch):
    from vlgen.commands.cli import main

    monkeypatch.delenv("VLGEN_TRACEBACK", raising=False)
    assert main(["train", "--set", "train.lrr=1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown config key train.lrr" in lines[0] and "vlgen --traceback train" in lines[0]
    with pytest.raises(ValueError, match="unknown config key train.lrr"):
        main(["--traceback", "train", "--set", "train.lrr=1"])
    monkeypatch.setenv("VLGEN_TRACEBACK", "1")
    with pytest.raises(ValueError, match="unknown config key train.lrr"):
        main(["train", "--set", "train.lrr=1"])
