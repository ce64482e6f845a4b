"""Batch plans: each epoch covered, global batches split over processes, per-step seeds."""
import numpy as np
import pytest
import torch

from vlgen.data.batches import GlobalBatches, ProcessBatches, local_slice, step_seed


def test_global_batches_cover_each_epoch_and_split_over_processes():
    plan = GlobalBatches(dataset_size=12, global_batch_size=4, seed=3, random_flip=True)
    epoch = [index for step in range(3) for index, _ in plan.step_items(step)]
    assert sorted(epoch) == list(range(12))
    second = [index for step in range(3, 6) for index, _ in plan.step_items(step)]
    assert sorted(second) == list(range(12)) and second != epoch
    flips = [flip for step in range(200) for _, flip in plan.step_items(step)]
    assert 0.4 < np.mean(flips) < 0.6
    halves = [list(ProcessBatches(plan, 5, 9, rank, 2)) for rank in range(2)]
    assert [a + b for a, b in zip(*halves)] == [plan.step_items(step) for step in range(5, 9)]
    assert not any(flip for _, flip in GlobalBatches(12, 4, 3, random_flip=False).step_items(0))
    with pytest.raises(ValueError, match="global_batch_size 4 is not divisible by the 3 processes"):
        ProcessBatches(plan, 0, 1, 0, 3)
    assert torch.equal(local_slice(torch.arange(6), 1, 3), torch.tensor([2, 3]))
    assert step_seed(0, 1, 2) != step_seed(0, 2, 1) and step_seed(0, 1, 2) == step_seed(0, 1, 2)
