"""diffusers DiffusionPipeline objects that sample images from vlgen denoisers.

A saved pipeline loads with its class's `from_pretrained(DIR)`, `load_pipeline(DIR)`, or
diffusers' generic `DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)` in any
process where vlgen is installed (vlgen.pipelines.hub: the directory's loader file imports it).
"""
from vlgen.pipelines.ddpm import DiTLLaMAPipeline
from vlgen.pipelines.flow import SiTLLaMAPipeline
from vlgen.pipelines.grid import labelled_grid
from vlgen.pipelines.loading import create_pipeline, load_pipeline
from vlgen.pipelines.samplers import DDPMSampler, FlowSampler
from vlgen.pipelines.schedulers import SCHEDULERS

__all__ = ["DiTLLaMAPipeline", "SiTLLaMAPipeline", "DDPMSampler", "FlowSampler", "SCHEDULERS", "create_pipeline",
           "load_pipeline", "labelled_grid"]
