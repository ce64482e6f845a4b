"""The run's components from a Config: dataset, denoiser, objective."""
import dataclasses
import importlib.util

from vlgen.core.choices import check_choice
from vlgen.data.images import ImageDataset
from vlgen.data.latents import LATENT_NORMS, LatentDataset
from vlgen.data.shapes import ShapesDataset
from vlgen.data.sources import FORMATS
from vlgen.models import create_model
from vlgen.models.blocks import NORMS
from vlgen.models.registry import model_config
from vlgen.objectives import KINDS, create_objective

DATA_KINDS = ("shapes", "images", "latents")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16", "launcher")
GRADIENT_COMPRESSION = (None, "bf16", "fp16")
# accelerate's trackers: the package each needs, as pip installs it
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim", "comet_ml": "comet_ml"}


def _positive(key, value):
    if value < 1:
        raise ValueError(f"config key {key} must be a positive integer, got {value}")


def check_config(config):
    """Choices and ranges, named by key, before anything is built."""
    check_choice("data.kind", config.data.kind, DATA_KINDS)
    check_choice("model.norm", config.model.norm, NORMS)
    check_choice("data.format", config.data.format, (None, *FORMATS))
    check_choice("data.latent_norm", config.data.latent_norm, LATENT_NORMS)
    check_choice("objective.kind", config.objective.kind, KINDS)
    check_choice("train.mixed_precision", config.train.mixed_precision, MIXED_PRECISION)
    check_tracker(config.logging.tracker)
    check_choice("train.gradient_compression", config.train.gradient_compression, GRADIENT_COMPRESSION)
    model_config(config.model.name)  # unknown names fail here, with close matches
    if config.data.kind != "shapes" and config.data.path is None:
        raise ValueError(f"data.kind={config.data.kind} needs data.path (the {config.data.kind} directory)")
    for key in ("train.global_batch_size", "train.max_steps", "train.gradient_accumulation_steps", "logging.log_every",
                "logging.checkpoint_every", "logging.sample_steps", "data.resolution", "data.num_samples"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(config, section), name))
    if config.logging.keep_checkpoints is not None:
        _positive("logging.keep_checkpoints", config.logging.keep_checkpoints)
    if config.logging.sample_every < 0 or config.data.num_workers < 0 or config.train.warmup_steps < 0:
        raise ValueError("logging.sample_every, data.num_workers and train.warmup_steps must not be negative")
    if not config.train.lr > 0:
        raise ValueError(f"train.lr must be positive, got {config.train.lr}")
    if not 0 <= config.train.ema_decay <= 1:
        raise ValueError(f"train.ema_decay must be in [0, 1], got {config.train.ema_decay}")
    if config.repa.encoder is not None and not (config.repa.coefficient > 0 and config.repa.projector_dim >= 1):
        raise ValueError("repa.coefficient must be positive and repa.projector_dim a positive integer")
    if config.train.grad_clip is not None and not config.train.grad_clip > 0:
        raise ValueError(f"train.grad_clip must be positive or null, got {config.train.grad_clip}")


def check_tracker(tracker):
    """A tracker accelerate supports whose package is installed, or None."""
    if tracker is None:
        return
    check_choice("logging.tracker", tracker, (None, *TRACKERS))
    if importlib.util.find_spec(tracker) is None:
        raise ValueError(f"logging.tracker={tracker} needs the {TRACKERS[tracker]} package: pip install "
                         f"{TRACKERS[tracker]} (or set logging.tracker=null)")


def build_dataset(data, seed):
    if data.kind == "shapes":
        return ShapesDataset(data.resolution, data.num_samples, seed=seed)
    if data.kind == "images":
        return ImageDataset(data.path, data.resolution, skip_bad=data.skip_bad, data_format=data.format,
                            image_column=data.image_column, label_column=data.label_column, split=data.split)
    return LatentDataset(data.path, random_flip=data.random_flip, latent_norm=data.latent_norm)


def data_info(dataset):
    """What a model trained on this dataset needs to know about it (saved with checkpoints)."""
    info = {"class_names": list(dataset.class_names), "channels": dataset.channels, "size": dataset.size}
    if isinstance(dataset, LatentDataset):
        meta = dataset.meta
        info["vae"] = {key: meta[key] for key in ("vae", "vae_subfolder", "scaling_factor", "shift_factor")}
        info["resolution"] = meta["resolution"]
        if dataset.norm is not None:
            info["latent_norm"] = {"mean": meta["channel_mean"], "std": meta["channel_std"]}
    return info


def build_model(model, info):
    """The denoiser for data of this shape; the patch size must divide the data's size."""
    overrides = {key: getattr(model, key) for key in ("hidden_size", "depth", "num_heads", "mlp_type")
                 if getattr(model, key)}
    overrides.update(norm=model.norm, qk_norm=model.qk_norm)
    patch = model_config(model.name)["patch_size"]
    if info["size"] % patch:
        raise ValueError(f"{model.name} has patch size {patch}, which does not divide the data's size "
                         f"{info['size']}: change data.resolution or the model")
    denoiser = create_model(model.name, sample_size=info["size"], in_channels=info["channels"],
                            num_classes=len(info["class_names"]), class_dropout_prob=model.class_dropout_prob,
                            **overrides)
    if model.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    return denoiser


def build_objective(objective, denoiser):
    """The training objective of the config's objective section, for this denoiser."""
    return create_objective(dataclasses.asdict(objective), denoiser.outputs_variance)
