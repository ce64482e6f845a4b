"""Conditioning and position embeddings shared by the denoisers: timesteps, class labels, 2D sin-cos."""
import math

import torch
from torch import nn


def timestep_embedding(t, dim, max_period=10000.0, freq_shift=0):
    """Sinusoidal embedding (N,) -> (N, dim), cosines first (GLIDE/DiT layout).

    freq_shift=0 is DiT's spacing; diffusers' DiT uses 1 (exponent divided by half - 1).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Timestep -> sinusoidal features -> Linear, SiLU, Linear."""

    def __init__(self, hidden_size, frequency_embedding_size=256, freq_shift=0):
        super().__init__()
        self.fc1 = nn.Linear(frequency_embedding_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.frequency_embedding_size = frequency_embedding_size
        self.freq_shift = freq_shift

    def forward(self, t):
        features = timestep_embedding(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        features = features.to(self.fc1.weight.dtype)
        return self.fc2(nn.functional.silu(self.fc1(features)))


class LabelEmbedder(nn.Module):
    """Class label -> vector. With dropout_prob > 0 the table has one extra row, the null class
    (id num_classes), used for classifier-free guidance; training drops labels to it at that rate."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels, drop_labels):
        """drop_labels: True draws the dropped labels at random (training), False keeps them all,
        or a (N,) bool mask names exactly which labels become the null class."""
        if isinstance(drop_labels, torch.Tensor):
            if self.dropout_prob == 0:
                raise ValueError("a label-drop mask needs a null class: this model has class_dropout_prob=0")
            return self.table(torch.where(drop_labels, self.num_classes, labels))
        if drop_labels and self.dropout_prob > 0:
            dropped = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(dropped, self.num_classes, labels)
        return self.table(labels)


def _sincos_1d(dim, positions):
    """(M,) float64 positions -> (M, dim): sines then cosines (MAE layout)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim, grid_h, grid_w):
    """Fixed 2D sin-cos position table (grid_h * grid_w, dim), tokens row-major, as in DiT/MAE:
    the first half of the channels encodes the column index, the second half the row index."""
    if dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    table = torch.cat([_sincos_1d(dim // 2, cols.reshape(-1)), _sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return table.float()
