"""diffusers DiffusionPipeline objects that sample images from vlgen denoisers."""
from pipelines.ddpm import DiTLLaMAPipeline
from pipelines.flow import SiTLLaMAPipeline
from pipelines.grid import labelled_grid
from pipelines.loading import create_pipeline, load_pipeline
from pipelines.settings import DDPMSettings, FlowSettings

__all__ = ["DiTLLaMAPipeline", "SiTLLaMAPipeline", "DDPMSettings", "FlowSettings", "create_pipeline",
           "load_pipeline", "labelled_grid"]
