"""Counts what would make a training step wait: reads of tensor values on the host (.item(), bool(),
int(), float(), .tolist(), .numpy(), .cpu(), which on a GPU each wait for it) and Python-level
collectives, each attributed to the step during or after which it happened, with the function that
made it. DDP's gradient all-reduce runs inside the reducer (C++) and is not counted.

On a CPU run every tensor is on the run's device, so a read there costs no sync: the denoiser's
label check reads labels only from plain CPU tensors (MODEL_CPU_CHECK), and a test checks that it
reads nothing from tensors elsewhere."""
import contextlib
import sys

import torch
import torch.distributed as dist

from vlgen.training.loop import Run

TENSOR_READS = ("item", "__bool__", "__int__", "__float__", "tolist", "numpy", "cpu")
MODEL_CPU_CHECK = "_check_inputs"
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "barrier", "reduce",
               "all_gather_object", "broadcast_object_list", "gather_object", "reduce_scatter_tensor")


@contextlib.contextmanager
def counted_syncs(monkeypatch):
    """Yields a list that fills with (phase, step, what, caller): phase "in" during Run.train_step of
    step `step` + 1, "after" in the loop's bookkeeping after step `step`; caller: the function
    that called `what`."""
    events, where = [], {"phase": None, "step": 0}

    def counting(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if where["phase"] is not None:
                events.append((where["phase"], where["step"], name, sys._getframe(1).f_code.co_name))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    for name in TENSOR_READS:
        counting(torch.Tensor, name)
    for name in COLLECTIVES:
        for module in (dist, dist.distributed_c10d):
            if hasattr(module, name):
                counting(module, name)
    original_step = Run.train_step

    def train_step(run, batch):
        where.update(phase="in", step=run.step)
        loss = original_step(run, batch)
        where.update(phase="after", step=run.step)
        return loss

    monkeypatch.setattr(Run, "train_step", train_step)
    yield events
