"""Multi-head self-attention: fused qkv projection with bias, optional 2D RoPE on q and k, SDPA."""
from torch import nn
from torch.nn import functional as F

from vlgen.models.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        """x: (N, T, D); rope: None or the (cos, sin) tables of the token grid, each (T, head_dim)."""
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (N, H, T, hd) each
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, hd)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))
