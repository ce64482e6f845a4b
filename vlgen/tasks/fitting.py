"""The optimisation loop the perception tasks share: AdamW, linear warm-up then cosine decay,
accelerate (one CPU to many GPUs; under `accelerate launch` the batch is per process)."""
import math

import torch
from tqdm.auto import tqdm

from vlgen.core.optimizer import create_adamw


def batches(dataset, collate, batch_size, *, shuffle, seed, num_workers):
    """A DataLoader of collate(items) batches; shuffled (seeded, incomplete last batch dropped) for
    training, in order for evaluation."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(seed), num_workers=num_workers,
                                       drop_last=shuffle)


def fit(model, loader, loss_fn, *, steps, lr, weight_decay=0.05, warmup_steps=20, seed=0, accelerator=None,
        progress=True, desc="training"):
    """Run `steps` optimiser steps of loss_fn(model, batch) -> scalar over loader (iterated again
    as often as needed). Leaves model in eval mode; returns the per-step losses."""
    from accelerate import Accelerator

    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    accelerator = accelerator or Accelerator()
    torch.manual_seed(seed)
    optimizer = create_adamw(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(warmup_steps, 1)) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    losses = []
    bar = tqdm(total=steps, desc=desc, disable=not (progress and accelerator.is_main_process))
    while len(losses) < steps:
        for batch in loader:
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())  # no host sync inside the loop
            bar.update()
            if len(losses) == steps:
                break
    bar.close()
    model.eval()
    return [float(loss) for loss in losses]
