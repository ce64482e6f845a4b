"""Feed-forward layers: SwiGLU (VisionLLaMA) and the GELU-tanh MLP of the plain DiT block."""
from torch import nn
from torch.nn import functional as F


def swiglu_hidden_size(dim, multiple_of=256):
    """LLaMA's rule: 2/3 of 4 * dim, rounded up to a multiple of 256."""
    hidden = int(2 * 4 * dim / 3)
    return -(-hidden // multiple_of) * multiple_of


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) without biases; gate and up share one fused matmul."""

    def __init__(self, dim, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.gate_up = nn.Linear(dim, 2 * hidden_size, bias=False)  # rows: [gate; up]
        self.down = nn.Linear(hidden_size, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    def __init__(self, dim, hidden_size):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_size)
        self.fc2 = nn.Linear(hidden_size, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
