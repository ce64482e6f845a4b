"""SiT stochastic interpolants: Linear / GVP / VP paths, velocity / score / noise predictions."""
from vlgen.transport.paths import DIFFUSION_FORMS, PATHS, GVPPath, InterpolantPath, LinearPath, VPPath
from vlgen.core.times import TIME_SAMPLINGS
from vlgen.transport.transport import LOSS_WEIGHTS, PREDICTIONS, Transport

__all__ = [
    "Transport", "InterpolantPath", "LinearPath", "GVPPath", "VPPath",
    "PATHS", "PREDICTIONS", "LOSS_WEIGHTS", "TIME_SAMPLINGS", "DIFFUSION_FORMS",
]
