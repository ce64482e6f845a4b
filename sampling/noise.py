"""Reproducible Gaussian noise, and the finiteness check of every sampler's model outputs."""
import torch


def randn(shape, generator=None, device="cpu", dtype=torch.float32):
    """Standard normal noise of this shape on device, drawn on the generator's device (so a CPU
    generator gives the same numbers whatever the device).

    generator: None, one torch.Generator for the whole batch, or a list of one generator per
    sample (row i comes from generator i alone, so a sample does not depend on its batch). Rows
    drawn on the CPU for a GPU are gathered in one pinned buffer and copied once, without a wait."""
    device = torch.device(device)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: pass one per sample")
        if any(g.device.type != "cpu" for g in generator):
            return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])
        rows = torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda" and torch.cuda.is_available())
        for row, g in zip(rows, generator):
            torch.randn(shape[1:], generator=g, dtype=dtype, out=row)
        return rows.to(device, non_blocking=True)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def randn_like(x, generator=None):
    """Standard normal noise shaped like x (see randn for the generator forms)."""
    return randn(x.shape, generator, x.device, x.dtype)


class FiniteCheck:
    """Watches the model outputs of one sampling run for NaN or inf. The first position (a step, or
    a time) at which an output was not finite is kept on the device, so the steps never wait to
    read it; `report()` raises once, at the end, naming it as the format string `where` does.
    immediate: raise at the first such output (for solvers that read every step on the host
    anyway, and would otherwise fail on the NaN first)."""

    def __init__(self, where="sampling step {:.0f}", immediate=False):
        self.where, self.immediate, self.first = where, immediate, None

    def see(self, output, position):
        """output: the model output at position (a number or a 0-dim tensor)."""
        if self.immediate:
            if not torch.isfinite(output).all():
                self._raise(position)
            return
        if self.first is None:
            self.first = torch.full((), float("nan"), device=output.device, dtype=torch.float64)
        bad = self.first.isnan() & ~torch.isfinite(output).all()
        self.first = torch.where(bad, position, self.first)  # a Python number goes in as a kernel argument

    def report(self):
        """Raise FloatingPointError naming the first non-finite position, if there was one."""
        if self.first is not None and not torch.isnan(self.first):
            self._raise(self.first.item())

    def _raise(self, position):
        raise FloatingPointError(f"model output has NaN or inf at {self.where.format(float(position))}: the model "
                                 "diverged or its weights are corrupt; check the checkpoint and the dtype (try float32)")
