"""Exponential moving average of model weights, as DiT keeps it."""
import copy

import torch


def create_ema(model):
    """A frozen copy of the model in eval mode (label dropout off)."""
    ema = copy.deepcopy(model).requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def update_ema(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for every parameter (decay=0 copies)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    ema_params = list(ema.parameters())
    model_params = [param.detach() for param in model.parameters()]
    if len(ema_params) != len(model_params):
        raise ValueError("EMA and model have different parameter lists")
    torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)
