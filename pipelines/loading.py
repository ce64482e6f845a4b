"""Build a pipeline from a trained denoiser and its objective, or load any saved vlgen pipeline."""
import json
from pathlib import Path

from vlgen.pipelines.ddpm import DiTLLaMAPipeline
from vlgen.pipelines.flow import SiTLLaMAPipeline
from vlgen.pipelines.hub import pipeline_class_name
from vlgen.pipelines.schedulers import make_scheduler
from vlgen.objectives import create_objective

PIPELINES = {cls.KIND: cls for cls in (DiTLLaMAPipeline, SiTLLaMAPipeline)}


def training_process(objective, process):
    """The pipeline's record of how the model was trained (pipe.config.process), every default
    resolved: objective, the objective section of a training config as a dict (kind "ddpm" or
    "flow"); process, the objective built from it (vlgen.objectives.create_objective)."""
    if process.kind == "ddpm":
        return {"kind": "ddpm", "noise_schedule": objective.get("noise_schedule") or "linear",
                "diffusion_steps": process.num_timesteps, "prediction": process.prediction}
    return {"kind": "flow", "path": process.path_type, "prediction": process.prediction,
            "sample_eps": process.sample_eps}


def create_pipeline(transformer, objective, class_names, vae=None, sampler=None, card=None, latent_norm=None,
                    **options):
    """The pipeline for a denoiser trained with objective (the training config's objective
    section as a dict). sampler: the scheduler's name (vlgen.pipelines.schedulers.SCHEDULERS; default
    the objective's: DiT's 250-step "ddpm", SiT's "ode" with dopri5); options go to it (e.g.
    num_inference_steps for vlgen's samplers, method="heun"). card: what the model card says
    beyond the model (vlgen.pipelines.hub.check_card_info). latent_norm: the per-channel
    normalisation of the training latents, if any (a data info's "latent_norm")."""
    learn_sigma = transformer.outputs_variance
    built = create_objective(objective, learn_sigma=learn_sigma)
    process = training_process(objective, built)
    scheduler = make_scheduler(process, learn_sigma, sampler or built.default_sampler, **options)
    return PIPELINES[process["kind"]](transformer, scheduler, vae, dict(enumerate(class_names)), process, card,
                                      latent_norm)


def load_pipeline(path, **kwargs):
    """Load whichever vlgen pipeline a directory holds (its model_index.json names the class).

    Args:
        path: a pipeline directory (`vlgen export`, `save_pretrained`).
        **kwargs: passed to from_pretrained (torch_dtype, ...).

    Returns:
        DiTLLaMAPipeline or SiTLLaMAPipeline.

    Raises:
        FileNotFoundError: path holds no model_index.json.
        ValueError: model_index.json is damaged or names no vlgen pipeline.
    """
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path} is not a pipeline directory (no model_index.json); make one with "
                                "`vlgen export CHECKPOINT --out DIR`")
    try:
        config = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{index} is not valid JSON ({error}): the pipeline directory is damaged; export it again "
                         "with `vlgen export CHECKPOINT --out DIR --overwrite`, or download it again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{index} holds {type(config).__name__}, not a pipeline's settings: the pipeline directory "
                         "is damaged; export it again with `vlgen export CHECKPOINT --out DIR --overwrite`")
    name = pipeline_class_name(config)
    classes = {cls.__name__: cls for cls in PIPELINES.values()}
    if name not in classes:
        raise ValueError(f"{index} names the pipeline class {name!r}; vlgen loads {', '.join(classes)}")
    if "process" not in config:  # its scheduler is an earlier settings class that no longer exists
        raise ValueError(f"{path} was exported by an earlier vlgen (model_index.json has no training process): "
                         "export it again from its checkpoint with `vlgen export CHECKPOINT --out DIR --overwrite`")
    try:
        return classes[name].from_pretrained(path, **kwargs)
    except OSError as error:  # diffusers' reading errors: a component's config or weights
        raise OSError(f"{str(error).strip()} The pipeline directory {path} is damaged or incomplete: export it again "
                      "(`vlgen export CHECKPOINT --out DIR --overwrite`) or download it again") from None
