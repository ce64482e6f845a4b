"""Defaults and choices that both the parsers (which must not import torch: `vlgen --help` stays
instant) and the commands use."""
NPZ_GUIDANCE_SCALE, GRID_GUIDANCE_SCALE = 1.5, 4.0  # DiT/SiT: 1.5 for the headline FID-50K, 4.0 for visuals
SAMPLE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # transformer and VAE precision of `vlgen sample`
DEMO_FRAMEWORKS = ("dit", "sit")  # `vlgen demo --framework`
FID_BATCH = {"cuda": 250, "cpu": 50}  # `vlgen fid` batches: a GPU takes large ones, a CPU's memory smaller ones
