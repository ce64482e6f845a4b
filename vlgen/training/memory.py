"""How much device memory a training step takes, estimated before the run, from shapes alone.

The activations are the tensors autograd keeps for backward after one forward, counted exactly on
fake tensors of the run's device (no memory is allocated and nothing is computed) under the run's
autocast, so the dtypes are those of the run; with
gradient checkpointing, backward recomputes one block at a time, which adds one block's share of
the plain activations. Weights, gradients, AdamW's two moments and the EMA copy are float32, 16 +
4 bytes per parameter. Kernels' workspaces, the allocator's fragmentation and the data are not
counted: the estimate is a floor.
"""
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

BYTES_PER_PARAMETER = 4 + 4 + 8 + 4  # weight, gradient, AdamW moments, EMA (float32)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def activation_bytes(build_model, batch, mixed_precision="no", checkpointing=False, device="cpu"):
    """Bytes autograd keeps for backward after one forward of a batch of shape (N, C, H, W) on
    device; build_model() makes the denoiser (it is built on fake tensors)."""
    saved = []

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    device = torch.device(device)
    dtype = AUTOCAST_DTYPES.get(mixed_precision)
    with FakeTensorMode(), torch.device(device):
        model = build_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        n = batch[0]
        x, t, y = torch.randn(batch), torch.randint(0, 2, (n,)), torch.zeros(n, dtype=torch.long)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x, t, y)
        depth = len(model.blocks)
    total = sum(saved)
    if checkpointing:  # one block recomputed at a time in backward
        total += activation_bytes(build_model, batch, mixed_precision, device=device) // depth
    return total


def step_bytes(build_model, parameters, batch, mixed_precision="no", checkpointing=False, device="cpu"):
    """{"states", "activations", "total"} in bytes of one training step (see the module's note)."""
    activations = activation_bytes(build_model, batch, mixed_precision, checkpointing, device)
    states = parameters * BYTES_PER_PARAMETER
    return {"states": states, "activations": activations, "total": states + activations}


def fit_problem(estimate, capacity, micro_batch, accumulation, checkpointing):
    """Why a step of this estimate will not fit in capacity bytes, with what to change, or None."""
    if estimate["total"] <= capacity:
        return None
    gib = 2**30
    advice = []
    if not checkpointing:
        advice.append("model.gradient_checkpointing: true")
    free_for_activations = capacity - estimate["states"]
    if free_for_activations > 0 and micro_batch > 1:
        factor = -(-estimate["activations"] // free_for_activations)
        advice.append(f"train.gradient_accumulation_steps: {accumulation * factor} (micro-batches of about "
                      f"{max(1, micro_batch // factor)})")
    return (f"a training step needs at least {estimate['total'] / gib:.1f} GiB (weights, gradients, optimizer and "
            f"EMA {estimate['states'] / gib:.1f} GiB, activations of a micro-batch of {micro_batch} "
            f"{estimate['activations'] / gib:.1f} GiB), more than the device's {capacity / gib:.1f} GiB; set "
            + (" or ".join(advice) if advice else "a smaller model"))
