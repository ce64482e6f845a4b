"""The run's components from a Config: dataset, denoiser, objective."""
from vlgen.choices import check_choice
from vlgen.diffusion import create_diffusion
from vlgen.models import create_model
from vlgen.models.registry import model_config
from vlgen.training.images import ImageFolderDataset
from vlgen.training.latents import LatentDataset
from vlgen.training.shapes import ShapesDataset
from vlgen.transport import Transport

DATA_KINDS = ("shapes", "images", "latents")
OBJECTIVES = ("ddpm", "flow")
MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = (None, "tensorboard")


def _positive(key, value):
    if value < 1:
        raise ValueError(f"config key {key} must be a positive integer, got {value}")


def check_config(config):
    """Choices and ranges, named by key, before anything is built."""
    check_choice("data.kind", config.data.kind, DATA_KINDS)
    check_choice("objective.kind", config.objective.kind, OBJECTIVES)
    check_choice("train.mixed_precision", config.train.mixed_precision, MIXED_PRECISION)
    check_choice("logging.tracker", config.logging.tracker, TRACKERS)
    model_config(config.model.name)  # unknown names fail here, with close matches
    if config.data.kind != "shapes" and config.data.path is None:
        raise ValueError(f"data.kind={config.data.kind} needs data.path (the {config.data.kind} directory)")
    for key in ("train.global_batch_size", "train.max_steps", "logging.log_every", "logging.checkpoint_every",
                "logging.sample_steps", "data.resolution", "data.num_samples"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(config, section), name))
    if config.logging.sample_every < 0 or config.data.num_workers < 0 or config.train.warmup_steps < 0:
        raise ValueError("logging.sample_every, data.num_workers and train.warmup_steps must not be negative")
    if not config.train.lr > 0:
        raise ValueError(f"train.lr must be positive, got {config.train.lr}")
    if not 0 <= config.train.ema_decay <= 1:
        raise ValueError(f"train.ema_decay must be in [0, 1], got {config.train.ema_decay}")
    if config.train.grad_clip is not None and not config.train.grad_clip > 0:
        raise ValueError(f"train.grad_clip must be positive or null, got {config.train.grad_clip}")


def build_dataset(data, seed):
    if data.kind == "shapes":
        return ShapesDataset(data.resolution, data.num_samples, seed=seed)
    if data.kind == "images":
        return ImageFolderDataset(data.path, data.resolution, skip_bad=data.skip_bad)
    return LatentDataset(data.path, random_flip=data.random_flip)


def data_info(dataset):
    """What a model trained on this dataset needs to know about it (saved with checkpoints)."""
    info = {"class_names": list(dataset.class_names), "channels": dataset.channels, "size": dataset.size}
    if isinstance(dataset, LatentDataset):
        meta = dataset.meta
        info["vae"] = {key: meta[key] for key in ("vae", "vae_subfolder", "scaling_factor", "shift_factor")}
        info["resolution"] = meta["resolution"]
    return info


def build_model(model, info):
    """The denoiser for data of this shape; the patch size must divide the data's size."""
    overrides = {key: getattr(model, key) for key in ("hidden_size", "depth", "num_heads") if getattr(model, key)}
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


class Objective:
    """times(n, device, generator) draws training times; loss(...) is the per-sample loss."""

    def __init__(self, kind, process):
        self.kind, self.process = kind, process

    def times(self, n, device, generator):
        if self.kind == "ddpm":
            return self.process.sample_timesteps(n, device, generator)
        return self.process.sample_time(n, device, generator)

    def loss(self, model, x, t, noise, **model_kwargs):
        return self.process.training_losses(model, x, t, noise, **model_kwargs)["loss"]


def build_objective(objective, denoiser):
    cfg = denoiser.config
    learned_sigma = denoiser.out_channels == 2 * cfg.in_channels
    if objective.kind == "ddpm":
        process = create_diffusion(noise_schedule=objective.noise_schedule, diffusion_steps=objective.diffusion_steps,
                                   prediction=objective.prediction or "eps", learn_sigma=learned_sigma)
        return Objective("ddpm", process)
    if learned_sigma:
        raise ValueError("the flow objective trains a model without learned-sigma channels: use a SiT-* or "
                         "SiT-LLaMA-* model, or objective.kind=ddpm for DiT-* / DiT-LLaMA-*")
    process = Transport(objective.path, objective.prediction or "velocity", objective.loss_weight,
                        objective.train_eps, objective.sample_eps, objective.time_sampling, objective.logit_mean,
                        objective.logit_std)
    return Objective("flow", process)
