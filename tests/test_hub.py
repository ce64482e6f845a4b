"""Pipelines the diffusers and Hub way: diffusers' generic loader in a fresh process, the model card,
push_to_hub up to the upload, and what a user without vlgen is told."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
from test_pipelines import tiny_pipeline
from test_training_loop import tiny_config

from vlgen.commands.cli import main
from vlgen.pipelines import SiTLLaMAPipeline, load_pipeline
from vlgen.pipelines.hub import LOADER_MODULE
from vlgen.training import train

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

FRESH_PROCESS = """
import sys
import numpy as np, torch
from diffusers import DiffusionPipeline
assert not any(name.split(".")[0] == "vlgen" for name in sys.modules)
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe([0, 4], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
np.save(sys.argv[2], images)
print(type(pipe).__module__, type(pipe).__name__)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run's checkpoint exported by `vlgen export` with the model card's options."""
    root = tmp_path_factory.mktemp("hub")
    train(tiny_config(root / "run", "train.max_steps=3"))
    (root / "scores.json").write_text(json.dumps({"fid": 12.5, "inception_score": 3.25, "note": "tiny"}))
    code = main(["export", str(root / "run" / "checkpoints" / "step-0000003"), "--out", str(root / "pipe"),
                 "--name", "Tiny SiT-LLaMA", "--license", "apache-2.0", "--dataset", "vlgen/shapes",
                 "--base-model", "vlgen/base", "--scores", str(root / "scores.json")])
    assert code == 0
    return root


def fresh_env(tmp_path):
    return {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}


@pytest.mark.slow
def test_diffusers_generic_loader_samples_an_export_in_a_fresh_process(exported, tmp_path):
    out = exported / "pipe"
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "images.npy")],
                            capture_output=True, text=True, env=fresh_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["vlgen.pipelines.flow", "SiTLLaMAPipeline"]
    pipe = load_pipeline(out)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe([0, 4], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), expected)


def test_the_class_and_load_pipeline_load_without_running_the_loader_file(exported):
    out = exported / "pipe"
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == [LOADER_MODULE, "SiTLLaMAPipeline"]
    for loaded in (SiTLLaMAPipeline.from_pretrained(out), load_pipeline(out)):
        assert type(loaded) is SiTLLaMAPipeline
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers asks before it imports the file
        DiffusionPipeline.from_pretrained(out)


def test_without_vlgen_the_generic_loader_says_pip_install_vlgen(exported, tmp_path):
    code = ("import sys; sys.modules['vlgen'] = None\n"  # as if vlgen were not installed
            "from diffusers import DiffusionPipeline\n"
            f"DiffusionPipeline.from_pretrained({str(exported / 'pipe')!r}, trust_remote_code=True)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh_env(tmp_path),
                            cwd=tmp_path)
    assert result.returncode != 0
    assert "ImportError: this is a vlgen pipeline and needs the vlgen package: pip install vlgen" in result.stderr


def test_the_model_card_holds_the_metadata_training_and_scores(exported):
    out = exported / "pipe"
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "diffusers" and data.pipeline_tag == "unconditional-image-generation"
    assert data.license == "apache-2.0" and data.datasets == ["vlgen/shapes"] and data.base_model == "vlgen/base"
    assert {"vlgen", "sit-llama", "class-conditional", "flow-matching"} <= set(data.tags)
    results = {result.metric_type: result.metric_value for result in data.eval_results}
    assert results == {"fid": 12.5, "inception_score": 3.25}  # numbers only: "note" is not a score
    assert all(result.dataset_name == "vlgen/shapes" for result in data.eval_results)
    text = card.text
    assert text.startswith("\n# Tiny SiT-LLaMA\n")
    assert "| steps | `3` |" in text and "| EMA decay | `0.9` |" in text and "| precision | `no` |" in text
    assert "| processes | `1` |" in text and "| fid | 12.5 |" in text
    config_block = text.split("```yaml\n")[1].split("```")[0]
    saved = yaml.safe_load((exported / "run" / "checkpoints" / "step-0000003" / "config.yaml").read_text())
    assert yaml.safe_load(config_block) == saved
    assert 'DiffusionPipeline.from_pretrained("PATH_OR_REPO_ID", trust_remote_code=True)' in text


def test_the_card_survives_loading_and_saving_again(exported, tmp_path):
    pipe = load_pipeline(exported / "pipe")
    assert pipe.config.card["training"]["steps"] == 3 and pipe.config.card["scores"]["fid"] == 12.5
    pipe.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "README.md").read_text() == (exported / "pipe" / "README.md").read_text()


def test_a_pipeline_without_training_information_gets_a_card_from_what_it_knows(tmp_path):
    pipe = tiny_pipeline("ddpm")
    pipe.save_pretrained(tmp_path / "pipe")
    card = ModelCard.load(tmp_path / "pipe" / "README.md")
    assert card.data.license == "other" and card.data.eval_results is None
    assert {"dit-llama", "diffusion"} <= set(card.data.tags)
    assert "## Training" not in card.text and "| parameters |" in card.text


def test_bad_card_information_is_refused():
    pipe = tiny_pipeline("flow")
    parts = {**pipe.components, "process": pipe.config.process}
    with pytest.raises(ValueError, match="unknown model card key"):
        SiTLLaMAPipeline(**parts, card={"licence": "mit"})
    with pytest.raises(ValueError, match="model card scores must be numbers; not: fid"):
        SiTLLaMAPipeline(**parts, card={"scores": {"fid": "low"}})


@pytest.mark.parametrize("route", ["push_to_hub", "save_pretrained"])
def test_push_to_hub_uploads_the_pipeline_with_its_loader_file_and_card(route, monkeypatch, tmp_path):
    import vlgen.pipelines.base as base

    created, uploads = [], []
    monkeypatch.setattr(base, "create_repo", lambda repo_id, **options: created.append((repo_id, options)) or
                        type("Repo", (), {"repo_id": f"someone/{repo_id.split('/')[-1]}"})())
    pipe = tiny_pipeline("flow")

    def upload(folder, repo_id, **options):  # stands for the upload: what would be sent, at that moment
        uploads.append((repo_id, sorted(os.listdir(folder)), Path(folder, "README.md").read_text(), options))
        return "commit"

    monkeypatch.setattr(pipe, "_upload_folder", upload)
    if route == "push_to_hub":
        answer = pipe.push_to_hub("tiny-sit", private=True, commit_message="first")
    else:
        answer = pipe.save_pretrained(tmp_path / "tiny-sit", push_to_hub=True, private=True, commit_message="first")
    assert answer == "commit"
    assert created == [("tiny-sit", {"exist_ok": True, "private": True, "token": None})]
    ((repo_id, files, readme, options),) = uploads
    assert repo_id == "someone/tiny-sit" and options["commit_message"] == "first"
    assert files == sorted(["README.md", "model_index.json", "scheduler", "transformer", f"{LOADER_MODULE}.py"])
    assert 'DiffusionPipeline.from_pretrained("someone/tiny-sit", trust_remote_code=True)' in readme
