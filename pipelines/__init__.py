"""diffusers DiffusionPipeline objects that sample images from vlgen denoisers."""
