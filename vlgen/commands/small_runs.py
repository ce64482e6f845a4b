"""Settings of the small CPU runs that `vlgen demo` and `vlgen compare` train.

Per objective kind: its training settings and the sampler of the scored samples. Flow matching
draws its training times logit-normally (more steps at mid noise, where the shape is decided);
DDPM takes the cosine schedule, made for small images (linear leaves many steps at near-pure
noise). Both learn markedly faster here than with the reference defaults (README, Quick start).
"""
OBJECTIVES = {
    "flow": (dict(kind="flow", time_sampling="logit-normal"),
             dict(sampler="ode", method="euler", num_inference_steps=25)),
    "ddpm": (dict(kind="ddpm", noise_schedule="cosine"), dict(sampler="ddim", num_inference_steps=50)),
}
WIDTH = dict(hidden_size=128, depth=4, num_heads=4)  # of the denoiser
