"""What makes a saved pipeline directory a Hub model: the loader file through which diffusers'
generic loader finds the pipeline class, and the model card (README.md).

diffusers looks a pipeline class up in its own namespace, unless model_index.json names it as
[module file, class] with that file in the directory (its mechanism for pipelines defined
outside diffusers). vlgen's loader file holds no pipeline code: it imports the installed vlgen,
so `DiffusionPipeline.from_pretrained(DIR_OR_HUB_ID, trust_remote_code=True)` works in a fresh
process, and without vlgen it says `pip install vlgen`.
"""
import json
import numbers
from pathlib import Path

import yaml
from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vlgen.models.registry import model_name

LOADER_MODULE = "vlgen_pipeline"
LOADER_SOURCE = '''"""This directory is a vlgen pipeline. diffusers' generic loader imports this file:

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(THIS_DIRECTORY_OR_HUB_ID, trust_remote_code=True)

It holds no pipeline code, only the import of the installed vlgen package (pip install vlgen)."""
try:
    from vlgen.pipelines import DiTLLaMAPipeline, SiTLLaMAPipeline  # noqa: F401
except ImportError as missing:
    raise ImportError("this is a vlgen pipeline and needs the vlgen package: pip install vlgen") from missing
'''
CARD_KEYS = ("name", "training", "scores", "license", "datasets", "base_model")
PIPELINE_TAG = "unconditional-image-generation"  # the Hub's image-generation task without a prompt
FAMILIES = {("ddpm", "llama"): "DiT-LLaMA", ("ddpm", "dit"): "DiT", ("flow", "llama"): "SiT-LLaMA",
            ("flow", "dit"): "SiT"}


def pipeline_class_name(config):
    """The pipeline class a model_index.json dict names: "X", or [loader module, "X"]."""
    name = config.get("_class_name")
    return name[1] if isinstance(name, list) and len(name) == 2 else name


def write_loader(directory, class_name):
    """Make model_index.json in directory name class_name through the loader file, and write that file."""
    directory = Path(directory)
    index = directory / "model_index.json"
    config = json.loads(index.read_text())
    config["_class_name"] = [LOADER_MODULE, class_name]
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / f"{LOADER_MODULE}.py").write_text(LOADER_SOURCE)


def check_card_info(card):
    """The card information a pipeline keeps (pipe.config.card), checked: a dict with the keys
    name, training (config, steps, mixed_precision, num_processes), scores (metric -> number),
    license, datasets (hub ids), base_model (a hub id)."""
    card = dict(card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model card key(s) {', '.join(unknown)}; known: {', '.join(CARD_KEYS)}")
    scores = card.get("scores") or {}
    bad = sorted(k for k, v in scores.items() if not isinstance(v, numbers.Real) or isinstance(v, bool))
    if bad:
        raise ValueError(f"model card scores must be numbers; not: {', '.join(bad)}")
    if isinstance(card.get("datasets"), str):
        card["datasets"] = [card["datasets"]]
    return card


def _family(pipe):
    return FAMILIES[(pipe.config.process["kind"], pipe.transformer.config.block_type)]


def _model_line(pipe, params):
    cfg = pipe.transformer.config
    named = model_name(cfg)
    shape = f"width {cfg.hidden_size}, {cfg.depth} blocks, {cfg.num_heads} heads, patch {cfg.patch_size}"
    return f"{named or _family(pipe)} ({shape}; {params / 1e6:.1f}M parameters)"


def _table(rows):
    return "\n".join(["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)])


def _training_rows(training):
    config = training.get("config") or {}
    train, data, objective = config.get("train", {}), config.get("data", {}), config.get("objective", {})
    rows = [("objective", objective.get("kind")), ("steps", training.get("steps")),
            ("global batch size", train.get("global_batch_size")), ("learning rate", train.get("lr")),
            ("EMA decay", train.get("ema_decay")),
            ("precision", training.get("mixed_precision") or train.get("mixed_precision")),
            ("processes", training.get("num_processes")), ("data", data.get("kind")),
            ("data path", data.get("path"))]
    return [(key, f"`{value}`") for key, value in rows if value is not None]


def model_card(pipe, repo_id=None):
    """The pipeline's model card (huggingface_hub.ModelCard): YAML metadata (library, pipeline tag,
    tags, license, base model, datasets, evaluation results) and a body that says what the model
    is, how to load it (from repo_id when given), how it was trained and how it scored, from
    pipe.config.card."""
    card = check_card_info(pipe.config.get("card"))
    cfg, process = pipe.transformer.config, pipe.config.process
    family, params = _family(pipe), sum(p.numel() for p in pipe.transformer.parameters())
    name = card.get("name") or f"{family} class-conditional image generator"
    scores, datasets = card.get("scores") or {}, card.get("datasets")
    factor = pipe.vae_scale_factor
    size = cfg.sample_size * factor
    space = (f"latents of a VAE ({cfg.in_channels} channels, {factor}x down)" if pipe.vae is not None
             else f"pixel space ({cfg.in_channels} channels)")
    results = [EvalResult(task_type=PIPELINE_TAG, dataset_type=datasets[0], dataset_name=datasets[0],
                          metric_type=metric, metric_value=value) for metric, value in scores.items()] if datasets else None
    data = ModelCardData(license=card.get("license") or "other", pipeline_tag=PIPELINE_TAG,
                         tags=["vlgen", family.lower(), "class-conditional",
                               "diffusion" if process["kind"] == "ddpm" else "flow-matching"],
                         base_model=card.get("base_model"), datasets=datasets, model_name=name if results else None,
                         eval_results=results)
    objective = ("DDPM (Gaussian diffusion, " + process["noise_schedule"] + " schedule)" if process["kind"] == "ddpm"
                 else f"flow matching ({process['path']} path, {process['prediction']} prediction)")
    example = next(iter(pipe.config.id2label.values()), "0")
    lines = [
        f"# {name}", "",
        f"A class-conditional image generator made with vlgen: {_model_line(pipe, params)}, trained with "
        f"{objective} on {cfg.num_classes} classes, {size}x{size} images, denoising in {space}.", "",
        "## Use", "",
        "```python",
        "# pip install vlgen",
        "from diffusers import DiffusionPipeline",
        "",
        f"pipe = DiffusionPipeline.from_pretrained({json.dumps(repo_id or 'PATH_OR_REPO_ID')}, trust_remote_code=True)",
        f"images = pipe([{json.dumps(example)}, 0], guidance_scale=4.0).images",
        "```", "",
        f"`trust_remote_code=True` lets diffusers import `{LOADER_MODULE}.py`, which holds no code but the import "
        f"of vlgen's `{type(pipe).__name__}`; `from vlgen.pipelines import load_pipeline` loads it without that flag. "
        f"The default sampler is `{pipe.scheduler.config.get('sampler') or type(pipe.scheduler).__name__}`; "
        "`pipe.use_sampler(NAME)` swaps it.", "",
        "## Model", "",
        _table([("architecture", f"`{family}`"), ("parameters", f"{params:,}"), ("hidden size", cfg.hidden_size),
                ("blocks", cfg.depth), ("heads", cfg.num_heads), ("patch size", cfg.patch_size),
                ("classes", cfg.num_classes), ("image size", f"{size}x{size}"),
                ("learned variance", "yes" if pipe.transformer.outputs_variance else "no")]),
    ]
    training = card.get("training") or {}
    if training:
        lines += ["", "## Training", "", _table(_training_rows(training))]
    if scores:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|",
                  *(f"| {metric} | {value:.6g} |" for metric, value in scores.items())]
    if training.get("config"):
        lines += ["", "<details><summary>Training config</summary>", "", "```yaml",
                  yaml.safe_dump(training["config"], sort_keys=True).rstrip(), "```", "", "</details>"]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    return populate_model_card(ModelCard(text))  # diffusers' helper: library_name "diffusers" where unset
