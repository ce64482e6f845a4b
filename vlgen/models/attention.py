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
        """x: (N, T, D); rope: None or the (cos, signed_sin) tables of the token grid, each (T, head_dim)."""
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is None:
            q, k, v = qkv.unbind(0)  # (N, H, T, hd) each
        else:
            q, k = apply_rope(qkv[:2], *rope).unbind(0)  # q and k in one pass
            v = qkv[2]
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, hd)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))
