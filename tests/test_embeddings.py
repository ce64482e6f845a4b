import math

import torch

from vlgen.models.embeddings import sincos_pos_embed_2d, timestep_embedding


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 7.0])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10000) * i / 4) for i in range(4)]
    expected = [math.cos(7 * f) for f in freqs] + [math.sin(7 * f) for f in freqs]
    assert torch.allclose(emb[1], torch.tensor(expected), atol=1e-6)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # diffusers' spacing divides the exponent by (half - 1): the last frequency is 1/10000.
    shifted = timestep_embedding(torch.tensor([1.0]), 8, freq_shift=1)
    assert math.isclose(shifted[0, 3].item(), math.cos(1e-4), rel_tol=1e-6)


def test_sincos_table_layout():
    table = sincos_pos_embed_2d(8, 2, 3)  # dim 8: 4 channels for the column, 4 for the row
    token = 1 * 3 + 2  # row 1, column 2
    omega = [1.0, 1e-2]  # 1 / 10000 ** (i / 2)
    column = [math.sin(2 * w) for w in omega] + [math.cos(2 * w) for w in omega]
    row = [math.sin(1 * w) for w in omega] + [math.cos(1 * w) for w in omega]
    assert torch.allclose(table[token], torch.tensor(column + row), atol=1e-6)
