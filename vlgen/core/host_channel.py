"""A CPU side channel between the processes of a launch, beside the device's process group.

Decisions that every process must share (stop after this step, which checkpoint to resume, one
answer to a question only the main process can check) travel as small CPU tensors or pickles on
a gloo group, so they never wait for the GPU. Waits for work that only the main process does
(writing a multi-GB checkpoint to a network file system, drawing sample grids) also go through
it, under a timeout of their own (WAIT_TIMEOUT), far above the device group's collective timeout
that such waits would otherwise exceed.
"""
from datetime import timedelta

import torch
import torch.distributed as dist

WAIT_TIMEOUT = timedelta(hours=2)  # the longest main-process-only work the others wait for


class HostChannel:
    """The side channel of a launch of num_processes processes (every process builds it, in the
    same order as the launch's other groups); with one process each call answers at once."""

    def __init__(self, num_processes, timeout=WAIT_TIMEOUT):
        self.num_processes = num_processes
        self.group = dist.new_group(backend="gloo", timeout=timeout) if num_processes > 1 else None

    @property
    def distributed(self):
        """Whether there are other processes to agree with."""
        return self.group is not None

    def any(self, flag):
        """Whether flag (a bool of this process) is true on any process."""
        if self.group is None:
            return bool(flag)
        value = torch.tensor([int(bool(flag))])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())  # a CPU tensor: no device sync

    def broadcast(self, value):
        """The main process's value (any picklable object), on every process."""
        if self.group is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value):
        """Every process's value, in process order, on every process."""
        if self.group is None:
            return [value]
        values = [None] * self.num_processes
        dist.all_gather_object(values, value, group=self.group)
        return values

    def wait_for_main(self):
        """Wait until every process arrives, however long the main process's work takes (up to
        WAIT_TIMEOUT)."""
        if self.group is not None:
            dist.barrier(group=self.group)
