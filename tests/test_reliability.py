"""Bad input through the `vlgen` command: every case ends in one line `vlgen CMD: error: ...` that
names the file or setting and the fix, with exit status 2 and no traceback (README, Reliability)."""
import shutil
import subprocess

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from test_pipelines import tiny_pipeline

from vlgen.commands.cli import main
from vlgen.core.ownership import owned
from vlgen.evaluation.inception import save_random_inception_weights

TINY = ["--set", "model.hidden_size=32", "--set", "model.depth=1", "--set", "data.num_samples=64",
        "--set", "data.num_workers=0", "--set", "train.global_batch_size=4", "--set", "train.max_steps=2",
        "--set", "logging.tracker=null", "--set", "logging.sample_every=0", "--set", "data.resolution=16",
        "--set", 'train.mixed_precision="no"']


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each test starts without accelerate's state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Everything the cases point at: a trained run, its export, damaged and foreign files."""
    root = tmp_path_factory.mktemp("reliability")
    assert main(["train", *TINY, "--set", f"logging.output_dir={root / 'run'}"]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    checkpoint = root / "run" / "checkpoints" / "step-0000002"
    tiny_pipeline("ddpm").save_pretrained(root / "pipeline")
    for name, damaged_file, text in [("corrupt-index", "model_index.json", "{not json"),
                                     ("corrupt-transformer", "transformer/config.json", '{"hidden_size": ')]:
        shutil.copytree(root / "pipeline", root / name)
        (root / name / damaged_file).write_text(text)
    (root / "scores.json").write_text("fid: 2.27")
    (root / "text.pt").write_text("not a checkpoint")
    (root / "empty.pt").write_bytes(b"")
    torch.save({"w": torch.randn(1000)}, root / "whole.pt")
    (root / "truncated.pt").write_bytes((root / "whole.pt").read_bytes()[:1500])
    torch.save({"payload": subprocess.Popen}, root / "evil.pt")
    np.savez(root / "noarr.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    (root / "text.npz").write_text("not an npz")
    images = root / "images" / "a"
    images.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    (root / "bad.yaml").write_text("train:\n  lr: [1e-4\n")
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("keep")
    damaged = root / "damaged-run" / "checkpoints"
    damaged.mkdir(parents=True)
    shutil.copytree(checkpoint, damaged / "step-0000002")
    model_file = damaged / "step-0000002" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:200])
    shutil.copy(root / "run" / "config.yaml", root / "damaged-run" / "config.yaml")
    weights = save_random_inception_weights(root / "inception.pth")
    return {"root": root, "checkpoint": checkpoint, "weights": weights}


def in_root(*args):
    return lambda f: [str(a).format(root=f["root"], checkpoint=f["checkpoint"], weights=f["weights"]) for a in args]


RUN = "--set logging.output_dir={root}/run".split()
DAMAGED = "--set logging.output_dir={root}/damaged-run".split()
CASES = {
    "config file missing": (in_root("train", "--config", "{root}/none.yaml"), "config file {root}/none.yaml not found"),
    "config YAML syntax error": (in_root("train", "--config", "{root}/bad.yaml"), "is not valid YAML (line 3"),
    "unknown config key": (in_root("train", "--set", "train.lrr=1"), "unknown config key train.lrr"),
    "config value of the wrong type": (in_root("train", "--set", "train.lr=fast"), "config key train.lr: expected float"),
    "config value out of range": (in_root("train", "--set", "train.max_steps=0"),
                                  "train.max_steps must be a positive integer"),
    "unknown model name": (in_root("train", "--set", "model.name=DiT-LLaMA-S/3"), "unknown model 'DiT-LLaMA-S/3'"),
    "re-run into a directory that holds a run": (in_root("train", *TINY, *RUN),
                                                 "already holds a training run (checkpoints up to step-0000002)"),
    "resume from a missing checkpoint": (in_root("train", *TINY, *RUN, "--resume", "{root}/nowhere"),
                                         "resume checkpoint {root}/nowhere does not exist"),
    "resume with another config": (in_root("train", *TINY, *RUN, "--set", "train.lr=0.5", "--resume", "latest"),
                                   "trained with another config (train.lr: 0.0003 there, 0.5 now)"),
    "resume from a truncated model.safetensors": (in_root("train", *TINY, *DAMAGED, "--resume", "latest"),
                                                  "model.safetensors is damaged (truncated or corrupt)"),
    "image data without a path": (in_root("train", "--set", "data.kind=images"), "data.kind=images needs data.path"),
    "image data folder missing": (in_root("train", *TINY, "--set", "data.kind=images", "--set",
                                          "data.path={root}/nowhere", "--set", "logging.output_dir={root}/x"),
                                  "{root}/nowhere"),
    "output directory in use by another run": (in_root("train", *TINY, "--set", "logging.output_dir={root}/busy"),
                                               "{root}/busy is in use by process"),
    "sampling a missing pipeline": (in_root("sample", "--pipeline", "{root}/nowhere", "--out", "{root}/s.npz"),
                                    "is not a pipeline directory (no model_index.json)"),
    "sampling output not an npz": (in_root("sample", "--pipeline", "{root}/pipeline", "--out", "{root}/s.png"),
                                   "must end in .npz"),
    "misspelt sampler option": (in_root("sample", "--pipeline", "{root}/pipeline", "--out", "{root}/s1.npz",
                                        "--num-samples", "2", "--option", "atoll=1"), "unknown option(s) atoll"),
    "NaN guidance scale": (in_root("sample", "--pipeline", "{root}/pipeline", "--out", "{root}/s2.npz",
                                   "--num-samples", "2", "--guidance-scale", "nan"),
                           "guidance_scale must be a finite number"),
    "negative DDIM eta": (in_root("sample", "--pipeline", "{root}/pipeline", "--out", "{root}/s3.npz",
                                  "--num-samples", "2", "--sampler", "ddim", "--option", "eta=-1"),
                          "eta must be >= 0"),
    "pipeline with a corrupt model_index.json": (in_root("sample", "--pipeline", "{root}/corrupt-index", "--grid",
                                                         "{root}/g1.png"),
                                                 "corrupt-index/model_index.json is not valid JSON"),
    "pipeline with a corrupt component config": (in_root("sample", "--pipeline", "{root}/corrupt-transformer",
                                                         "--grid", "{root}/g2.png"),
                                                 "The pipeline directory {root}/corrupt-transformer is damaged or "
                                                 "incomplete: export it again"),
    "negative inference steps": (in_root("sample", "--pipeline", "{root}/pipeline", "--grid", "{root}/g3.png",
                                         "--num-inference-steps", "-3"),
                                 "--num-inference-steps must be a positive integer, got -3"),
    "zero resolution": (in_root("sample", "--pipeline", "{root}/pipeline", "--grid", "{root}/g4.png", "--resolution",
                                "0"), "--resolution must be a positive integer, got 0"),
    "unknown label name": (in_root("sample", "--pipeline", "{root}/pipeline", "--grid", "{root}/g.png", "--labels",
                                   "cirle"), "unknown label name 'cirle'; did you mean 'circle'"),
    "export of a directory that is no checkpoint": (in_root("export", "{root}/notes", "--out", "{root}/p"),
                                                    "is not a training checkpoint (no ema/ directory)"),
    "export --overwrite of the current directory": (in_root("export", "{checkpoint}", "--out", ".", "--overwrite"),
                                                    "refusing to write into ."),
    "export --overwrite of a folder it did not write": (in_root("export", "{checkpoint}", "--out", "{root}/notes",
                                                                "--overwrite"),
                                                        "is not an earlier output of this command"),
    "export with scores that are no JSON": (in_root("export", "{checkpoint}", "--out", "{root}/p2", "--scores",
                                                    "{root}/scores.json"),
                                            "--scores {root}/scores.json: not a readable JSON file"),
    "convert a text file": (in_root("convert", "{root}/text.pt", "--from", "dit", "--out", "{root}/c"),
                            "text.pt is not a readable torch file"),
    "convert an empty file": (in_root("convert", "{root}/empty.pt", "--from", "dit", "--out", "{root}/c"),
                              "empty.pt is not a readable torch file"),
    "convert a truncated .pt": (in_root("convert", "{root}/truncated.pt", "--from", "dit", "--out", "{root}/c"),
                                "truncated.pt is not a readable torch file"),
    "convert an unsafe pickle": (in_root("convert", "{root}/evil.pt", "--from", "dit", "--out", "{root}/c"),
                                 "evil.pt is not a plain tensor checkpoint"),
    "fid on an npz without arr_0": (in_root("fid", "{root}/noarr.npz", "--metrics", "isc", "--inception-weights",
                                            "{weights}"), "noarr.npz holds no arr_0 (it holds images)"),
    "fid on a file that is no npz": (in_root("fid", "{root}/text.npz", "--metrics", "isc", "--inception-weights",
                                             "{weights}"), "text.npz is not an npz file"),
    "fid against a missing reference": (in_root("fid", "{root}/images", "{root}/ref.npz", "--inception-weights",
                                                "{weights}"), "reference file {root}/ref.npz does not exist"),
    "fid with an unknown metric": (in_root("fid", "{root}/images", "--metrics", "fidd"), "unknown metrics ['fidd']"),
    "fid with unsafe Inception weights": (in_root("fid", "{root}/images", "--metrics", "isc", "--inception-weights",
                                                  "{root}/evil.pt"), "evil.pt is not a plain tensor checkpoint"),
    "fid with truncated Inception weights": (in_root("fid", "{root}/images", "--metrics", "isc",
                                                     "--inception-weights", "{root}/truncated.pt"),
                                             "truncated.pt is not a readable torch file"),
    "demo with zero steps": (in_root("demo", "--out", "{root}/d", "--steps", "0"),
                             "--steps must be a positive integer"),
    "latents of a missing folder": (in_root("extract-latents", "{root}/nowhere", "--out", "{root}/l", "--vae",
                                            "{root}/vae"), "{root}/nowhere"),
    "classifier --overwrite of the current directory": (in_root("train-classifier", "--out", ".", "--overwrite"),
                                                        "refusing to write into ."),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_problem(case, files, capsys, monkeypatch):
    args, expected = CASES[case]
    argv = args(files)
    expected = expected.format(root=files["root"])
    monkeypatch.chdir(files["root"])
    if case == "output directory in use by another run":
        with owned(files["root"] / "busy", command="vlgen train (another run)"):
            code = main(argv)
    else:
        code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"vlgen {argv[0]}: error:")]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_the_cases_cover_every_command_and_at_least_thirty_inputs():
    assert len(CASES) >= 30
    commands = {args({"root": "r", "checkpoint": "c", "weights": "w"})[0] for args, _ in CASES.values()}
    assert commands == {"train", "sample", "export", "convert", "fid", "demo", "extract-latents", "train-classifier"}
