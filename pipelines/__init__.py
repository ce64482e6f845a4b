"""diffusers DiffusionPipeline objects that sample images from vlgen denoisers.

Importing this package registers the pipeline classes with diffusers, so that its generic
`DiffusionPipeline.from_pretrained(DIR)` finds the class an exported model_index.json names
(diffusers looks pipeline classes up in its own namespace, or runs code from DIR only with
trust_remote_code; exports hold no code).
"""
import diffusers

from pipelines.ddpm import DiTLLaMAPipeline
from pipelines.flow import SiTLLaMAPipeline
from pipelines.grid import labelled_grid
from pipelines.loading import create_pipeline, load_pipeline
from pipelines.samplers import DDPMSampler, FlowSampler
from pipelines.schedulers import SCHEDULERS

__all__ = ["DiTLLaMAPipeline", "SiTLLaMAPipeline", "DDPMSampler", "FlowSampler", "SCHEDULERS", "create_pipeline",
           "load_pipeline", "labelled_grid"]

for _pipeline in (DiTLLaMAPipeline, SiTLLaMAPipeline):
    setattr(diffusers, _pipeline.__name__, _pipeline)
