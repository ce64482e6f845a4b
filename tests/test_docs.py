"""The docs stay true: the README is short, every Python block of the README and the guides runs
(on tiny models and data where the text names real ones, through the same calls), every `vlgen`
command in them parses with the real parser and names existing configs, every `--flag` they
mention exists, and the generated CLI and config references cover every subcommand, option and
config key."""
import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_model
from test_pipelines import tiny_pipeline
from test_vision_llama import reference_state_dict

from vlgen.commands.cli import build_parser
from vlgen.evaluation.inception import WEIGHTS_ENV, save_random_inception_weights
from vlgen.training.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

# What the prose of a block takes as given (a model, data), per (file, block number).
SETUP = {
    ("docs/guides/objectives.md", 0): """
model = tiny_model("DiT-LLaMA-S/2", in_channels=4, sample_size=32)
x0, y = torch.randn(8, 4, 32, 32), torch.arange(8)
""",
    ("docs/guides/objectives.md", 1): """
model = tiny_model("SiT-LLaMA-S/2", in_channels=4, sample_size=32)
x1 = torch.randn(8, 4, 32, 32)
""",
}
# Real names and sizes -> tiny ones, per file; each pair must still occur in its file.
TINY = {
    "docs/guides/models.md": [('create_model("DiT-LLaMA-XL/2")', 'create_model("DiT-LLaMA-S/2")')],
    "docs/guides/pipelines.md": [('.to("cuda")', '.to("cpu")'), ("dit([207]", "dit([7]"),
                                 ("num_inference_steps=250, height=64, width=64", "num_inference_steps=3, height=32, width=32")],
    "docs/guides/perception.md": [
        ('load_reference_classifier("vit_llama_rope_base_patch16.pth")',
         'load_reference_classifier("vit_llama_rope_base_patch16.pth", image_size=32, num_heads=2)'),
        ("torch.randn(1, 3, 384, 384)", "torch.randn(1, 3, 48, 48)"),
        ("steps=800", "steps=2"), ("steps=1200", "steps=2"), ("steps=250", "steps=2"),
        ("ShapesDataset(32, 500, seed=1)", "ShapesDataset(32, 8, seed=1)"),
        ("ShapeScenes(32, 200, seed=1, classes=classes)", "ShapeScenes(32, 4, seed=1, classes=classes)"),
        ("ShapeScenes(64, 200, seed=1, classes=classes)", "ShapeScenes(64, 4, seed=1, classes=classes)")],
}


def blocks(path, language):
    return [code for lang, code in FENCE.findall(path.read_text()) if lang == language]


def relative(path):
    return path.relative_to(ROOT).as_posix()


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = blocks(ROOT / "README.md", "bash")[0]
    assert "pip install . && vlgen demo" in first_block and 'pip install ".[test]" && pytest' in first_block
    for link in re.findall(r"\]\(((?!https?://)[^)#]+)", text):  # every local link and image exists
        assert (ROOT / link).exists(), link


def _fixtures(directory, monkeypatch):
    """What the blocks load, at the paths they name: pipelines, npz files, a reference classifier,
    Inception weights; uploads stop where they would leave the machine."""
    import vlgen.pipelines.base as base

    for path, kind in (("demo-output/pipeline", "flow"), ("shapes-pipeline", "flow"), ("dit-pipeline", "ddpm")):
        tiny_pipeline(kind).save_pretrained(directory / path)
    rng = np.random.default_rng(0)
    for name in ("samples.npz", "VIRTUAL_imagenet256_labeled.npz"):
        np.savez(directory / name, rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    monkeypatch.setenv(WEIGHTS_ENV, str(save_random_inception_weights(directory / "inception.pth")))
    torch.save({"model": reference_state_dict()}, directory / "vit_llama_rope_base_patch16.pth")
    uploads = []
    monkeypatch.setattr(base, "create_repo", lambda repo_id, **options: type("Repo", (), {"repo_id": repo_id})())
    monkeypatch.setattr(base.ClassConditionalPipeline, "_upload_folder",
                        lambda self, folder, repo_id, **options: uploads.append(repo_id))
    return uploads


PYTHON_DOCS = [relative(path) for path in DOCS if blocks(path, "python")]


@pytest.mark.slow
@pytest.mark.parametrize("name", PYTHON_DOCS)
def test_every_python_block_runs(name, tmp_path, monkeypatch):
    text = (ROOT / name).read_text()
    for real, tiny in TINY.get(name, []):
        assert real in text, f"{name} no longer says {real!r}: update TINY"
        text = text.replace(real, tiny)
    monkeypatch.chdir(tmp_path)
    uploads = _fixtures(tmp_path, monkeypatch)
    namespace = {"tiny_model": tiny_model, "torch": torch}
    codes = [code for language, code in FENCE.findall(text) if language == "python"]
    for number, code in enumerate(codes):
        exec(SETUP.get((name, number), ""), namespace)
        exec(compile(code, f"{name} python block {number + 1}", "exec"), namespace)
    if any(".push_to_hub(" in code for code in codes):
        assert uploads, "the block's push_to_hub did not reach the upload"


def _commands(code):
    """The shell commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _vlgen_arguments(command, variables):
    """The arguments after `vlgen` / `-m vlgen` in a command (up to &&, |, ; or >), or None when
    it does not run vlgen. A quoted command (srun bash -c '...') is read inside its quotes."""
    for name, value in variables.items():
        command = command.replace(f"'${name}'", value).replace(f"${name}", value)
    words = []
    for word in shlex.split(command):
        words += shlex.split(word) if " -m vlgen " in word else [word]
    for index, word in enumerate(words):
        if word == "vlgen" and (index == 0 or words[index - 1] in ("-m", "&&")):
            arguments = words[index + 1:]
            ends = [arguments.index(stop) for stop in ("&&", "|", ";", ">") if stop in arguments]
            return arguments[:min(ends)] if ends else arguments
    return None


def test_every_vlgen_command_of_the_docs_parses_and_names_existing_configs(capsys):
    parser, checked = build_parser(), 0
    for path in DOCS:
        for code in blocks(path, "bash"):
            variables = dict(re.findall(r"^(\w+)=(\S+)", code, flags=re.MULTILINE))
            for command in _commands(code):
                arguments = _vlgen_arguments(command, variables)
                if arguments is None:
                    continue
                try:
                    args = parser.parse_args(arguments)
                except SystemExit:
                    pytest.fail(f"{relative(path)}: `vlgen {' '.join(arguments)}` does not parse: "
                                f"{capsys.readouterr().err.strip().splitlines()[-1]}")
                config = getattr(args, "config", None)
                assert config is None or (ROOT / config).is_file(), f"{relative(path)}: no config {config}"
                checked += 1
    assert checked >= 40


def _options():
    """{subcommand: its option strings} of the real parser."""
    hooks = _hooks()
    return {name: {s for action in sub._actions for s in action.option_strings}
            for name, (_, sub) in hooks.subcommands().items()}


def test_every_flag_the_docs_give_a_vlgen_subcommand_exists():
    options = _options()
    mention = re.compile(r"vlgen ([a-z][\w-]*)((?:[^`\n]|\\\n)*)")
    for path in DOCS:
        text = path.read_text()
        for subcommand, rest in mention.findall(text):
            if subcommand not in options:
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest.split("|")[0].split(";")[0]):
                if flag.startswith("--no-") and "--" + flag[5:] in options[subcommand]:
                    continue
                assert flag in options[subcommand], f"{relative(path)}: vlgen {subcommand} has no {flag}"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_covers_every_subcommand_and_option():
    hooks = _hooks()
    page = hooks.cli_page()
    for name, (_, sub) in hooks.subcommands().items():
        section = page.split(f"## vlgen {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in section, (name, option)
    assert set(re.findall(r"^## vlgen (\S+)", page, flags=re.MULTILINE)) == set(hooks.subcommands())


def test_the_config_reference_covers_every_key_with_type_default_and_meaning():
    rows = {(section, key): (annotation, default, meaning)
            for section, key, annotation, default, meaning in _hooks().config_fields()}
    expected = {(section.name, field.name): field for section in dataclasses.fields(Config)
                for field in dataclasses.fields(section.default_factory)}
    assert set(rows) == set(expected)
    for key, field in expected.items():
        annotation, default, meaning = rows[key]
        assert meaning, f"config key {'.'.join(key)} has no comment to say what it means"
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert eval(default) == value, key  # the page's default is the dataclass's
    page = _hooks().config_page()
    assert all(f"`{section}.{key}`" in page for section, key in expected)


def test_the_project_files_name_the_license_the_papers_and_the_current_version():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)[1]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == version and citation["license"] == "Apache-2.0"
    titles = " ".join(reference["title"] for reference in citation["references"])
    for paper in ("VisionLLaMA", "Scalable Diffusion Models with Transformers", "SiT"):
        assert paper in titles
    assert f"\n## {version}\n" in (ROOT / "CHANGELOG.md").read_text()
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for step in ('pytest -m "not slow"', "pytest ", "## Adding a model", "## Adding a sampler", "## Adding a metric"):
        assert step in contributing
