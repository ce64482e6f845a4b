"""Training configuration: typed dataclasses loaded from YAML, with dotted overrides.

A YAML file has the sections model, objective, data, train, logging and repa; `base: other.yaml`
(relative to the file) starts from another file. Unknown keys and wrong types are errors naming
the key. The defaults are a small run on the built-in `shapes` dataset.
"""
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class ModelConfig:
    name: str = "SiT-LLaMA-S/4"  # a registered size (`vlgen models`)
    hidden_size: int | None = 128  # None: the named size's width, depth and heads
    depth: int | None = 4  # blocks (None: the named size's)
    num_heads: int | None = 4  # attention heads (None: the named size's)
    class_dropout_prob: float = 0.1  # labels dropped to the null class, for classifier-free guidance
    mlp_type: str | None = None  # None: the block's own MLP; "gelu" / "swiglu" gives it the other's (ablations)
    norm: str = "layernorm"  # the blocks' token normalisation: layernorm (DiT's) or rmsnorm (LightningDiT's)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (LightningDiT's)
    gradient_checkpointing: bool = False  # recompute each block in backward: less activation memory, ~1/3 more compute
    compile: bool = False  # torch.compile the denoiser (off: on CPU it pays little for its compile time)


@dataclass
class ObjectiveConfig:
    kind: str = "flow"  # "ddpm" (DiT's Gaussian diffusion) or "flow" (SiT's interpolants)
    prediction: str | None = None  # None: "eps" for ddpm, "velocity" for flow
    noise_schedule: str = "linear"  # ddpm
    diffusion_steps: int = 1000  # ddpm
    path: str = "Linear"  # flow: Linear, GVP or VP
    loss_weight: str | None = None  # flow, score/noise predictions: velocity or likelihood
    train_eps: float | None = None  # flow: None takes SiT's defaults
    sample_eps: float | None = None  # flow: how far sampling stops short of the interval's ends (None: SiT's)
    time_sampling: str = "uniform"  # uniform or logit-normal (both objectives)
    logit_mean: float = 0.0  # logit-normal times: the mean m of sigmoid(m + s z)
    logit_std: float = 1.0  # logit-normal times: the spread s


@dataclass
class DataConfig:
    kind: str = "shapes"  # "shapes" (built in), "images" or "latents" (vlgen extract-latents)
    path: str | None = None  # images: class folder, parquet/arrow file or folder, hub id, or tar shards; latents: directory
    format: str | None = None  # images: folder, hf or webdataset (None: recognised from path)
    image_column: str = "image"  # images from a Hugging Face dataset: the image column
    label_column: str = "label"  # images from a Hugging Face dataset: the label column
    split: str = "train"  # images from a Hugging Face dataset: the split
    latent_norm: str = "vae"  # latents: vae (the VAE's scaling) or channel (also per-channel mean and std, LightningDiT's)
    resolution: int = 32  # image side in pixels (shapes, images); latents carry their own
    num_samples: int = 10000  # shapes: dataset length
    random_flip: bool = True  # horizontal flip with probability 1/2
    skip_bad: bool = False  # images: skip (and count) unreadable files instead of failing
    num_workers: int = 2  # DataLoader processes per training process


@dataclass
class TrainConfig:
    global_batch_size: int = 32  # summed over processes
    max_steps: int = 2000  # optimisation steps of the whole run
    lr: float = 3e-4  # AdamW learning rate (after warm-up)
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (LightningDiT: [0.9, 0.95])
    warmup_steps: int = 0  # linear learning-rate warm-up, then constant
    grad_clip: float | None = None  # max gradient norm
    ema_decay: float = 0.995  # short runs: 0.995^2000 leaves no trace of the initial weights (0.999^2000 leaves 14%)
    # auto (bf16 where this machine runs it faster), no, bf16 or fp16 (autocast; fp16 with loss scaling), or
    # launcher (what accelerate launch --mixed_precision / accelerate config set)
    mixed_precision: str = "auto"
    tf32: bool = True  # CUDA float32 matmuls and convolutions in TF32 (Ampere and later); false: IEEE float32
    gradient_accumulation_steps: int = 1  # micro-batches per process and step: the same run in less memory
    gradient_compression: str | None = None  # bf16 or fp16: DDP sends gradients at half width (slow interconnects)
    seed: int = 0  # initial weights, data order and every random draw of the run


@dataclass
class LoggingConfig:
    output_dir: str = "runs/shapes"  # checkpoints, metrics.jsonl, config.yaml, grids, tracker logs
    log_every: int = 50  # steps between loss / throughput records
    checkpoint_every: int = 500  # plus one at the end
    keep_checkpoints: int | None = None  # the newest N checkpoints stay, older ones are removed; None: all
    sample_every: int = 500  # sample-grid PNGs from the EMA model; 0 disables them
    sample_steps: int = 50  # sampler steps for the grid
    sample_guidance_scale: float = 4.0  # classifier-free guidance of the grids
    tracker: str | None = "tensorboard"  # tensorboard, wandb, mlflow, aim, comet_ml (installed), or None


@dataclass
class RepaConfig:
    # None: off; a vlgen classifier directory, or a DINOv2 model through torch.hub (dinov2_vitb14, ...;
    # PATH/dinov2_vitb14 with PATH a local copy of its repository)
    encoder: str | None = None
    block: int = 8  # align the tokens after this many blocks (REPA's 8 of 28)
    coefficient: float = 0.5  # weight of the alignment loss (REPA's lambda)
    projector_dim: int = 2048  # width of the MLP projector


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    repa: RepaConfig = field(default_factory=RepaConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


def _type_name(annotation):
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value, annotation, key):
    """value as the annotated type, or a ValueError naming the key."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"config key {key}: null is not allowed, expected {_type_name(annotation)}")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
        if option is str and isinstance(value, str):
            return value
        if option is str and isinstance(value, bool) and len(options) == 1:
            raise ValueError(f"config key {key}: expected a string, got the boolean {value!r} (YAML reads unquoted "
                             f"yes/no/on/off/true/false as booleans): quote it, e.g. --set '{key}=\"no\"'")
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            items = typing.get_args(option)
            if len(value) == len(items):
                return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    raise ValueError(f"config key {key}: expected {_type_name(annotation)}, got {value!r}")


def _build(cls, values, prefix):
    if not isinstance(values, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or 'top level'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; {cls.__name__} has: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, key + ".")
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _merge(base, update):
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path, seen=()):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    if path.resolve() in seen:
        raise ValueError(f"config file {path} includes itself through 'base'")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"config file {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}; "
                         "fix the file") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of sections, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), values)


def parse_override(text):
    """'train.lr=2e-4' -> {'train': {'lr': 2e-4}} (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form section.key=value (e.g. train.lr=2e-4)")
    try:
        nested = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ValueError(f"override {text!r}: the value {raw!r} is not valid YAML; quote it") from None
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load_config(path=None, overrides=()):
    """Build a training Config from an optional YAML file plus dotted overrides.

    Args:
        path: a YAML config (`base: other.yaml` starts from another file), or None for the defaults.
        overrides: 'section.key=value' strings, applied in order after the file.

    Returns:
        Config: missing keys keep their defaults.

    Raises:
        ValueError: an unknown key or a value of the wrong type, named.
    """
    values = _read_yaml(path) if path is not None else {}
    for text in overrides:
        values = _merge(values, parse_override(text))
    return config_from_dict(values)


def config_from_dict(values):
    return _build(Config, values, "")


def save_config(config, path):
    Path(path).write_text(yaml.safe_dump(plain_values(config.to_dict()), sort_keys=False))


def plain_values(value):
    """Tuples as lists (recursively): plain YAML that loads back with safe_load, and values that
    compare equal to a config read back from YAML."""
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    return value
