"""Training configs: YAML + dotted overrides into typed dataclasses; errors name the key."""
from pathlib import Path

import pytest

from vlgen.models import model_config
from vlgen.training import Config, load_config
from vlgen.training.build import check_config
from vlgen.training.config import config_from_dict, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_RUNS = {
    "dit-llama-b-4": "DiT-LLaMA-B/4", "dit-llama-l-4": "DiT-LLaMA-L/4", "dit-llama-xl-4": "DiT-LLaMA-XL/4",
    "dit-llama-xl-2": "DiT-LLaMA-XL/2", "dit-b-4": "DiT-B/4", "dit-l-4": "DiT-L/4", "dit-xl-4": "DiT-XL/4",
    "dit-xl-2": "DiT-XL/2", "sit-llama-s-2": "SiT-LLaMA-S/2", "sit-llama-b-2": "SiT-LLaMA-B/2",
    "sit-llama-l-2": "SiT-LLaMA-L/2", "sit-llama-xl-2": "SiT-LLaMA-XL/2", "sit-s-2": "SiT-S/2", "sit-b-2": "SiT-B/2",
    "sit-l-2": "SiT-L/2", "sit-xl-2": "SiT-XL/2",
}


@pytest.mark.parametrize("run", ["dit-xl-2", "dit-llama-xl-2", "sit-xl-2", "sit-llama-xl-2"])
def test_the_512_configs_are_the_256_recipe_on_512_latents_for_3m_steps(run):
    config = load_config(CONFIGS / "imagenet512" / f"{run}.yaml")
    check_config(config)
    base = load_config(CONFIGS / "imagenet256" / f"{run}.yaml")
    assert config.data.path == "data/imagenet512-latents" and config.train.max_steps == 3_000_000
    assert config.logging.output_dir == f"results/512/{run}"
    assert (config.model, config.objective, config.train.lr, config.train.global_batch_size) == (
        base.model, base.objective, base.train.lr, base.train.global_batch_size)


@pytest.mark.parametrize("variant, changed", [
    ("repa", {"repa": {"encoder": "dinov2_vitb14", "block": 8, "coefficient": 0.5, "projector_dim": 2048}}),
    ("lightning", {"model": {"norm": "rmsnorm", "qk_norm": True}, "objective": {"time_sampling": "logit-normal"},
                   "train": {"betas": (0.9, 0.95)}})])
def test_the_accelerator_configs_are_the_sit_llama_recipe_plus_their_options(variant, changed):
    base = load_config(CONFIGS / "imagenet256" / "sit-llama-xl-2.yaml").to_dict()
    config = load_config(CONFIGS / "imagenet256" / f"sit-llama-xl-2-{variant}.yaml")
    check_config(config)
    values = config.to_dict()
    assert values["logging"].pop("output_dir") == f"results/sit-llama-xl-2-{variant}"
    base["logging"].pop("output_dir")
    for section, keys in changed.items():
        for key, value in keys.items():
            assert values[section].pop(key) == value
            base[section].pop(key)
    assert values == base  # nothing else differs


def test_defaults_are_a_small_shapes_run():
    config = load_config()
    assert config == Config()
    assert config.data.kind == "shapes" and config.objective.kind == "flow"
    check_config(config)


@pytest.mark.parametrize("run, model", sorted(PAPER_RUNS.items()))
def test_paper_configs_follow_the_reference_recipe(run, model):
    config = load_config(CONFIGS / "imagenet256" / f"{run}.yaml")
    check_config(config)
    assert config.model.name == model
    assert (config.model.hidden_size, config.model.depth, config.model.num_heads) == (None, None, None)
    train = config.train
    assert (train.lr, train.weight_decay, train.betas) == (1e-4, 0.0, (0.9, 0.999))
    assert (train.global_batch_size, train.ema_decay, train.max_steps) == (256, 0.9999, 400_000)
    assert train.grad_clip is None and train.warmup_steps == 0 and config.model.class_dropout_prob == 0.1
    assert config.objective.kind == ("ddpm" if model.startswith("DiT") else "flow")
    assert train.mixed_precision == ("bf16" if "LLaMA" in model else "no")
    assert config.data.kind == "latents" and config.data.random_flip
    assert config.logging.output_dir == f"results/{run}"


def test_every_shipped_config_loads_and_checks():
    paths = [p for p in CONFIGS.rglob("*.yaml")]
    assert len(paths) >= len(PAPER_RUNS) + 1
    for path in paths:
        config = load_config(path)
        check_config(config)
        model_config(config.model.name)


def test_overrides_are_typed_and_applied_in_order(tmp_path):
    config = load_config(overrides=["train.lr=2e-4", "train.betas=[0.8, 0.95]", "model.hidden_size=null",
                                    "data.kind=images", "data.path=/data", "train.lr=5e-4"])
    assert config.train.lr == 5e-4 and isinstance(config.train.lr, float)
    assert config.train.betas == (0.8, 0.95)
    assert config.model.hidden_size is None and config.data.path == "/data"
    path = tmp_path / "run.yaml"
    save_config(config, path)
    assert load_config(path) == config


def test_base_files_merge_section_by_section(tmp_path):
    (tmp_path / "parent.yaml").write_text("train:\n  lr: 1.0e-3\n  max_steps: 7\nmodel:\n  depth: 3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain:\n  max_steps: 9\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.train.lr, config.train.max_steps, config.model.depth) == (1e-3, 9, 3)


@pytest.mark.parametrize("values, message", [
    ({"train": {"lrr": 1}}, "unknown config key train.lrr"),
    ({"optimiser": {}}, "unknown config key optimiser"),
    ({"train": {"max_steps": "many"}}, "config key train.max_steps: expected int"),
    ({"train": {"max_steps": 2.5}}, "config key train.max_steps: expected int"),
    ({"train": {"max_steps": True}}, "config key train.max_steps: expected int"),
    ({"train": {"lr": "fast"}}, "config key train.lr: expected float"),
    ({"train": {"lr": None}}, "config key train.lr: null is not allowed"),
    ({"train": {"betas": [0.9]}}, "config key train.betas: expected tuple"),
    ({"model": {"name": 3}}, "config key model.name: expected str"),
    ({"model": "DiT-XL/2"}, "config section model: expected a mapping"),
])
def test_unknown_keys_and_wrong_types_name_the_key(values, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        config_from_dict(values)


@pytest.mark.parametrize("overrides, message", [
    (["data.kind=video"], "unknown data.kind 'video'"),
    (["objective.kind=gan"], "unknown objective.kind"),
    (["train.mixed_precision=fp8"], "unknown train.mixed_precision"),
    (["train.mixed_precision=no"], "got the boolean False (YAML reads unquoted yes/no"),
    (["model.name=DiT-LLaMA-XL/3"], "unknown model 'DiT-LLaMA-XL/3'; did you mean"),
    (["data.kind=images"], "data.kind=images needs data.path"),
    (["train.global_batch_size=0"], "train.global_batch_size must be a positive integer"),
    (["train.ema_decay=1.5"], "train.ema_decay must be in"),
    (["train.lr=0"], "train.lr must be positive"),
])
def test_bad_values_are_errors_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        check_config(load_config(overrides=overrides))


def test_file_and_override_syntax_errors(tmp_path):
    with pytest.raises(ValueError, match="not of the form section.key=value"):
        load_config(overrides=["train.lr"])
    with pytest.raises(FileNotFoundError, match="missing.yaml not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        load_config(tmp_path / "list.yaml")
