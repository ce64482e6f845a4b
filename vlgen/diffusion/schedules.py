"""Beta schedules and timestep respacing of ADM-style Gaussian diffusion (as DiT uses it)."""
import math

import numpy as np

SCHEDULES = ("linear", "cosine")


def beta_schedule(name, num_steps=1000):
    """float64 betas. "linear": Ho et al., scaled to any step count; "cosine": Nichol & Dhariwal
    (squaredcos_cap_v2), betas capped at 0.999."""
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    if name == "cosine":
        alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        steps = np.arange(num_steps, dtype=np.float64)
        ratios = [alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps) for i in steps]
        return np.minimum(1 - np.array(ratios), 0.999)
    raise ValueError(f"unknown beta schedule {name!r}; choose from {SCHEDULES}")


def space_timesteps(num_timesteps, section_counts):
    """The kept timesteps (sorted) of a respaced process.

    section_counts: "250" (250 evenly strided steps), "10,15,20" (the process cut into equal
    sections, each strided to its count), or "ddimN" (the DDIM paper's integer stride giving
    exactly N steps). An empty string or None keeps every step.
    """
    if section_counts in (None, ""):
        return list(range(num_timesteps))
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot take exactly {desired} of {num_timesteps} steps with an integer stride")
    if isinstance(section_counts, str):
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"timestep respacing {section_counts!r} is not 'N', 'N,M,...' or 'ddimN'") from None
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 0 < count <= size:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))
