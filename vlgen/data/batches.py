"""Which samples and which random numbers each training step uses.

Everything random in a step is a function of (seed, step), drawn for the whole global batch and
then sliced per process: the run is the same for any number of processes (one process on the
global batch equals N processes on their slices), and resuming at step k needs no sampler or
generator state beyond k.
"""
import numpy as np
import torch

# Independent random streams of one step.
FLIP_STREAM, STEP_STREAM = 1, 2


def step_seed(seed, step, stream):
    """A 63-bit seed for one (run seed, step, stream), from numpy's SeedSequence mixing."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class GlobalBatches:
    """The global batch of step s is positions s*B ... (s+1)*B - 1 of an endless stream made of
    one permutation of the dataset per epoch (seeded by (seed, epoch)); each sample is flipped
    with probability 1/2 when random_flip is on. Items are (dataset index, flip) pairs."""

    def __init__(self, dataset_size, global_batch_size, seed, random_flip):
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.batch, self.seed, self.random_flip = dataset_size, global_batch_size, seed, random_flip
        self._epoch, self._order = None, None

    def _permutation(self, epoch):
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._order

    def step_items(self, step):
        positions = np.arange(step * self.batch, (step + 1) * self.batch)
        indices = [int(self._permutation(int(p) // self.size)[int(p) % self.size]) for p in positions]
        if self.random_flip:
            flips = np.random.default_rng(step_seed(self.seed, step, FLIP_STREAM)).random(self.batch) < 0.5
        else:
            flips = np.zeros(self.batch, dtype=bool)
        return list(zip(indices, flips.tolist()))


class ProcessBatches:
    """A DataLoader batch_sampler: this process's contiguous slice of each global batch, for steps
    start .. stop - 1."""

    def __init__(self, plan, start, stop, process_index, num_processes):
        if plan.batch % num_processes:
            raise ValueError(f"train.global_batch_size {plan.batch} is not divisible by the {num_processes} "
                             f"processes; use a multiple of {num_processes}")
        self.plan, self.start, self.stop = plan, start, stop
        self.local = plan.batch // num_processes
        self.offset = process_index * self.local

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.plan.step_items(step)[self.offset: self.offset + self.local]


def local_slice(tensor, process_index, num_processes):
    """This process's contiguous share of a global-batch tensor."""
    local = tensor.shape[0] // num_processes
    return tensor[process_index * local: (process_index + 1) * local]


def step_generator(seed, step, device):
    return torch.Generator(device=device).manual_seed(step_seed(seed, step, STEP_STREAM))
