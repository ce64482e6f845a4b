"""Which schedulers a pipeline can sample with, by name; whether a scheduler fits the model's
training process; and the step loop that runs a diffusers scheduler.

A DDPM-trained model runs vlgen's DDPMSampler and diffusers' DDPM-family schedulers over the
same betas and prediction type. A flow model runs vlgen's FlowSampler and diffusers' flow-matching
schedulers. diffusers' flow time runs from noise at sigma = 1 to data at sigma = 0, SiT's from
noise at t = 0 to data at t = 1, and diffusers' velocity is d x / d sigma = -(SiT's velocity):
the one conversion is t = 1 - sigma and v_diffusers = -v_SiT (`flow_model_output`).
"""
import inspect

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
                       HeunDiscreteScheduler, UniPCMultistepScheduler)

from vlgen.pipelines.samplers import DDPMSampler, FlowSampler
from vlgen.core.choices import check_choice
from vlgen.diffusion.diffusers_schedulers import PREDICTION_TYPES, diffusers_config
from vlgen.diffusion.schedules import beta_schedule
from vlgen.transport import Transport

# name -> (class, preset options); vlgen's samplers first.
SCHEDULERS = {
    "ddpm": {
        "ddpm": (DDPMSampler, {"sampler": "ddpm"}),
        "ddim": (DDPMSampler, {"sampler": "ddim"}),
        "diffusers-ddpm": (DDPMScheduler, {"timestep_spacing": "linspace"}),  # ADM's respacing: = "ddpm"
        "diffusers-ddim": (DDIMScheduler, {}),
        "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpm-solver++-karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                              "use_karras_sigmas": True}),
        "unipc": (UniPCMultistepScheduler, {}),
        "euler": (EulerDiscreteScheduler, {}),
        "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
        "heun": (HeunDiscreteScheduler, {}),
    },
    "flow": {
        "ode": (FlowSampler, {"sampler": "ode"}),
        "sde": (FlowSampler, {"sampler": "sde"}),
        "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),
        "flow-heun": (FlowMatchHeunDiscreteScheduler, {}),
    },
}
DEFAULT_STEPS = 20  # a diffusers scheduler's steps when neither the call nor the scheduler says
FLOW_TRAIN_TIMESTEPS = 1000  # diffusers' flow timesteps are sigma * 1000
LEARNED_VARIANCES = ("learned", "learned_range")  # diffusers' variance_type values that read the model's variance


def process_config(process, learn_sigma):
    """The diffusers keys of a training process (pipe.config.process), for from_config."""
    if process["kind"] == "ddpm":
        return diffusers_config(process["noise_schedule"], process["diffusion_steps"], process["prediction"],
                                learn_sigma)
    return {"num_train_timesteps": FLOW_TRAIN_TIMESTEPS, "shift": 1.0}


def make_scheduler(process, learn_sigma, name, **options):
    """The scheduler `name` (SCHEDULERS[kind]) fitted to a training process; options go to its
    constructor (e.g. eta=0.5, method="heun", solver_order=3) and are checked by name."""
    choices = SCHEDULERS[process["kind"]]
    cls, preset = choices[check_choice("sampler", name, tuple(choices))]
    _check_options(cls, options, name)
    return cls.from_config(process_config(process, learn_sigma), **{**preset, **options})


def with_options(scheduler, **options):
    """The same kind of scheduler with some options changed (checked by name)."""
    _check_options(type(scheduler), options, type(scheduler).__name__)
    return type(scheduler).from_config(scheduler.config, **options)


def _check_options(cls, options, name):
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {name!r} ({cls.__name__}); it takes "
                         f"{', '.join(sorted(accepted))}")


def process_transport(process):
    """The Transport of a flow training process (pipe.config.process)."""
    return Transport(process["path"], process["prediction"], sample_eps=process["sample_eps"])


def is_flow_matching(scheduler):
    return isinstance(scheduler, FlowSampler) or type(scheduler).__name__.startswith("FlowMatch")


def _unfit(scheduler, why, kind):
    names = ", ".join(SCHEDULERS[kind])
    return ValueError(f"{type(scheduler).__name__} does not fit this model: {why}. Choose a scheduler made for it: "
                      f"pipe.use_sampler(NAME) with NAME one of {names}, or X.from_config(pipe.scheduler.config)")


def check_fits(scheduler, process, learn_sigma):
    """Refuse a scheduler that would sample the model wrongly, naming the mismatch."""
    kind = process["kind"]
    if kind == "ddpm":
        if is_flow_matching(scheduler):
            raise _unfit(scheduler, "it is a flow-matching scheduler and the model was trained with DDPM", kind)
        betas = beta_schedule(process["noise_schedule"], process["diffusion_steps"])
        theirs = scheduler_betas(scheduler)
        if theirs is None:
            raise _unfit(scheduler, "it has no betas (not a DDPM-family scheduler)", kind)
        if len(theirs) != len(betas) or not np.allclose(theirs, betas, rtol=1e-5, atol=1e-8):
            raise _unfit(scheduler, f"its {len(theirs)} betas differ from the model's {process['noise_schedule']} "
                         f"schedule of {len(betas)} steps", kind)
        expected = PREDICTION_TYPES[process["prediction"]]
        if scheduler.config.prediction_type != expected:
            raise _unfit(scheduler, f"its prediction_type is {scheduler.config.prediction_type!r}; the model "
                         f"predicts {expected!r}", kind)
        if uses_learned_variance(scheduler) and not learn_sigma:
            raise _unfit(scheduler, f"its variance_type {scheduler.config.variance_type!r} needs learned-variance "
                         "channels, which the model has not", kind)
        return
    if not is_flow_matching(scheduler):
        raise _unfit(scheduler, "it is not a flow-matching scheduler and the model was trained with flow matching",
                     kind)
    if isinstance(scheduler, FlowSampler):
        return
    mismatch = process_transport(process).flow_matching_mismatch()
    if mismatch:
        raise _unfit(scheduler, mismatch, kind)
    if scheduler.config.get("use_dynamic_shifting"):
        raise _unfit(scheduler, "use_dynamic_shifting needs an image-size dependent mu that this model has not",
                     kind)


def scheduler_betas(scheduler):
    """A scheduler's float64 betas (vlgen's DDPMSampler: from its config), or None."""
    if isinstance(scheduler, DDPMSampler):
        betas = scheduler.config.trained_betas
        return None if betas is None else np.asarray(betas, dtype=np.float64)
    betas = getattr(scheduler, "betas", None)
    return None if betas is None else betas.double().cpu().numpy()


def uses_learned_variance(scheduler):
    """Whether the scheduler's step takes the model's learned-variance channels: only DDPMScheduler
    does (DPM-Solver's variance_type only drops them, and keeps 3 channels, wrongly for latents)."""
    return isinstance(scheduler, DDPMScheduler) and scheduler.config.variance_type in LEARNED_VARIANCES


def step_scheduler(scheduler):
    """The scheduler the step loop runs: DPM-Solver with a learned variance_type is given the
    prediction channels only and must not cut them to 3 (diffusers' DiT habit)."""
    if not uses_learned_variance(scheduler) and scheduler.config.get("variance_type") in LEARNED_VARIANCES:
        return type(scheduler).from_config(scheduler.config, variance_type=None)
    return scheduler


def flow_model_output(velocity):
    """SiT's velocity (d x / d t, t = 1 - sigma) as diffusers' flow-matching model output (d x / d sigma)."""
    return -velocity


def flow_time(timestep):
    """diffusers' flow timestep (sigma * 1000) as SiT's t."""
    return 1 - timestep / FLOW_TRAIN_TIMESTEPS


def set_timesteps(scheduler, num_inference_steps, device, flow):
    """set_timesteps as diffusers' flow pipelines call it: flow matching over sigmas
    linspace(1, 1/N, N) then 0 (N equal steps of SiT's t from 0 to 1, as sample_ode's fixed-step
    grid) where the scheduler takes sigmas, its own spacing otherwise."""
    if flow and "sigmas" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist(),
                                device=device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)


def run_scheduler(scheduler, model_output, noise, num_inference_steps, generator, progress_bar, flow,
                  callback=None):
    """Sample with a diffusers scheduler: x = noise * init_noise_sigma, then for each timestep
    x = step(model_output(scale_model_input(x, t), t), t, x); progress_bar: the pipeline's.
    callback(i, t, x) -> x runs after each step (callback_on_step_end)."""
    set_timesteps(scheduler, num_inference_steps, noise.device, flow)
    timesteps = scheduler.timesteps
    if scheduler.order == 1 and len(torch.unique(timesteps)) < len(timesteps):
        # e.g. Karras sigmas over the cosine schedule (its sigma_max is huge): most steps round to
        # t = 999, and a multistep solver would look the wrong step up.
        raise ValueError(f"{type(scheduler).__name__} with this config repeats timesteps over the model's schedule "
                         f"({timesteps[:6].tolist()} ...): it cannot sample this model; use it without "
                         "use_karras_sigmas (or another spacing)")
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts at the noise itself
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    scale = getattr(scheduler, "scale_model_input", lambda sample, timestep: sample)  # flow matching: none
    with progress_bar(total=len(timesteps)) as bar:
        for i, t in enumerate(timesteps):
            output = model_output(scale(x, t), t)
            x = scheduler.step(output, t, x, **extra, return_dict=False)[0]
            if callback is not None:
                x = callback(i, t, x)
            bar.update()
    return x


def timestep_batch(t, x):
    """A scheduler timestep as the model's (N,) float timesteps."""
    return torch.as_tensor(t, device=x.device, dtype=torch.float32).expand(x.shape[0])
