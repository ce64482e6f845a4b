"""Build a pipeline from a trained denoiser and its objective, or load any saved vlgen pipeline."""
import json
from pathlib import Path

from pipelines.ddpm import DiTLLaMAPipeline
from pipelines.flow import SiTLLaMAPipeline
from pipelines.settings import DDPMSettings, FlowSettings
from vlgen.objectives import create_objective

PIPELINES = {cls.__name__: cls for cls in (DiTLLaMAPipeline, SiTLLaMAPipeline)}


def create_pipeline(transformer, objective, class_names, vae=None, **sampler_defaults):
    """The pipeline for a denoiser trained with objective (the training config's objective
    section as a dict: kind "ddpm" or "flow" and its settings). sampler_defaults: the saved
    sampler, num_inference_steps (and method, for flow)."""
    id2label = dict(enumerate(class_names))
    process = create_objective(objective, learn_sigma=transformer.out_channels == 2 * transformer.config.in_channels)
    if process.kind == "ddpm":
        settings = DDPMSettings(noise_schedule=objective["noise_schedule"],
                                diffusion_steps=objective["diffusion_steps"], prediction=process.prediction,
                                **sampler_defaults)
        return DiTLLaMAPipeline(transformer, settings, vae, id2label)
    settings = FlowSettings(path=process.path_type, prediction=process.prediction, sample_eps=process.sample_eps,
                            **sampler_defaults)
    return SiTLLaMAPipeline(transformer, settings, vae, id2label)


def load_pipeline(path, **kwargs):
    """Whichever vlgen pipeline a directory holds (its model_index.json names the class);
    kwargs go to from_pretrained (torch_dtype, ...)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path} is not a pipeline directory (no model_index.json); make one with "
                                "`vlgen export CHECKPOINT --out DIR`")
    name = json.loads(index.read_text()).get("_class_name")
    if name not in PIPELINES:
        raise ValueError(f"{index} names the pipeline class {name!r}; vlgen loads {', '.join(PIPELINES)}")
    return PIPELINES[name].from_pretrained(path, **kwargs)
