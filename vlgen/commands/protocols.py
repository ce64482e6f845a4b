"""Named evaluation protocols of `vlgen sample`: every choice a paper's FID-50K made, in one name.

A protocol sets the sampler and its options, the steps, the guidance scale and the channels it
guides, the precision (and TF32), the sample count and how labels are drawn, as the official
sampling script did; any flag given on the command line wins over the protocol, flag by flag.
The settings in force are printed and recorded beside the npz. Kept free of torch: the parser
lists the names.
"""
from dataclasses import dataclass, field

from vlgen.commands.defaults import GRID_GUIDANCE_SCALE, NPZ_GUIDANCE_SCALE

# What `vlgen sample` samples with where neither a flag nor a protocol says (None: the pipeline's own).
DEFAULTS = {"num_samples": 50_000, "guidance_scale": None, "guided_channels": None, "guidance_interval": None,
            "num_inference_steps": None, "sampler": None, "dtype": "auto", "tf32": True, "class_labels": "balanced"}
CLASS_LABELS = ("balanced", "random")  # sample i has class i mod K, or a class drawn uniformly from (seed, i)


@dataclass(frozen=True)
class Protocol:
    source: str  # the script it reproduces
    kind: str  # the training process of the models it samples: "ddpm" or "flow"
    settings: dict
    options: dict = field(default_factory=dict)  # the sampler's options


# DiT's and SiT's sample_ddp.py guide the first 3 latent channels (their forward_with_cfg), draw
# uniformly random labels and decode with sd-vae-ft-ema; 50,000 samples for FID-50K.
_PAPER = {"guidance_scale": 1.5, "guided_channels": 3, "dtype": "float32", "num_samples": 50_000,
          "class_labels": "random"}
PROTOCOLS = {
    "dit": Protocol("DiT's sample_ddp.py with the DiT paper's evaluation in float32 (its PyTorch weights re-evaluated "
                    "at FP32, TF32 off)", "ddpm", {**_PAPER, "sampler": "ddpm", "num_inference_steps": 250,
                                                   "tf32": False}),
    "visionllama": Protocol("VisionLLaMA's dit/sample_ddp.py (DiT's script, with its default TF32 matmuls)", "ddpm",
                            {**_PAPER, "sampler": "ddpm", "num_inference_steps": 250, "tf32": True}),
    "sit-sde": Protocol("SiT's sample_ddp.py SDE with its defaults (Euler-Maruyama, sigma diffusion, a mean last "
                        "step of 0.04, 250 steps)", "flow",
                        {**_PAPER, "sampler": "sde", "num_inference_steps": 250, "tf32": True},
                        {"method": "euler", "diffusion_form": "sigma", "diffusion_norm": 1.0, "last_step": "mean",
                         "last_step_size": 0.04}),
    "sit-ode": Protocol("SiT's sample_ddp.py ODE with its defaults (adaptive dopri5, atol 1e-6, rtol 1e-3)", "flow",
                        {**_PAPER, "sampler": "ode", "tf32": True}, {"method": "dopri5", "atol": 1e-6, "rtol": 1e-3}),
    # LightningDiT's inference.py: Euler over 250 time points (249 steps), timestep_shift 0.3 (shift
    # 1 / 0.3 here), cfg_interval_start 0.11 (no guidance at times below it, near the noise), cfg
    # scale 6.7 (its 800-epoch FID 1.35; 10.0 for the 64-epoch model), 3 guided channels, TF32 on.
    "lightningdit": Protocol("LightningDiT's inference.py (Euler ODE of 250 points with timestep shift 0.3, cfg "
                             "interval from t=0.11, cfg scale 6.7)", "flow",
                             {**_PAPER, "sampler": "ode", "num_inference_steps": 249, "guidance_scale": 6.7,
                              "guidance_interval": (0.11, 1.0), "tf32": True},
                             {"method": "euler", "shift": 1 / 0.3}),
}


def resolve_settings(args, options):
    """Set every sampling setting of args that no flag gave from args.protocol (or the defaults);
    options: the --option values, which win over the protocol's sampler options. Returns the
    sampler options in force, and args.overridden names the flags that overrode the protocol."""
    protocol = PROTOCOLS.get(args.protocol)
    args.overridden = []
    for name, default in DEFAULTS.items():
        given = getattr(args, name)
        if protocol is not None and name in protocol.settings:
            if given is not None and given != protocol.settings[name]:
                args.overridden.append(name)
            setattr(args, name, protocol.settings[name] if given is None else given)
        elif given is None:
            setattr(args, name, default)
    if args.guidance_scale is None:
        args.guidance_scale = NPZ_GUIDANCE_SCALE if args.grid is None else GRID_GUIDANCE_SCALE
    merged = dict(protocol.options) if protocol is not None else {}
    merged.update(options)
    if protocol is not None and options.keys() & protocol.options.keys():
        args.overridden.append("option")
    return merged


def check_protocol_fits(protocol_name, kind):
    """The protocol samples models of its training process only."""
    protocol = PROTOCOLS.get(protocol_name)
    if protocol is not None and protocol.kind != kind:
        fitting = [name for name, other in PROTOCOLS.items() if other.kind == kind]
        raise ValueError(f"--protocol {protocol_name} samples {protocol.kind} models; this pipeline's model was trained "
                         f"with {kind}: use --protocol {' or '.join(fitting)}")


def describe(args, options):
    """One line of the settings in force, naming the protocol and what overrode it."""
    steps = "the pipeline's steps" if args.num_inference_steps is None else f"{args.num_inference_steps} steps"
    sampler = args.sampler or "the pipeline's sampler"
    channels = "all channels" if args.guided_channels is None else f"{args.guided_channels} channels"
    if args.guidance_interval is not None:
        channels += f" at times {args.guidance_interval[0]:g} to {args.guidance_interval[1]:g}"
    option_text = ", ".join(f"{key}={value}" for key, value in options.items())
    line = (f"{sampler} ({option_text}), {steps}, guidance {args.guidance_scale} on {channels}, {args.dtype}, "
            f"TF32 {'on' if args.tf32 else 'off'}, {args.num_samples:,} samples, {args.class_labels} labels")
    if args.protocol is None:
        return f"sampling: {line}"
    overridden = f"; overridden: {', '.join('--' + name.replace('_', '-') for name in args.overridden)}" \
        if args.overridden else ""
    return f"protocol {args.protocol} ({PROTOCOLS[args.protocol].source}): {line}{overridden}"
