"""Multi-head self-attention: fused qkv projection with bias, optional 2D RoPE on q and k, SDPA."""
import torch
from torch import nn
from torch.nn import functional as F

from vlgen.models.rope import apply_rope


def attend(q, k, v):
    """softmax(q k^T / sqrt(hd)) v by torch's SDPA; q, k, v: (N, H, T, hd). Attention that will be
    back-propagated on a CPU runs in float32: torch's bf16 CPU kernel is faster forward but slower
    backward at small shapes (README, Benchmarks). Sampling keeps the bf16 kernel."""
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and q.dtype != torch.float32 and training:
        with torch.autocast("cpu", enabled=False):  # autocast would cast the float32 inputs back down
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


QK_NORM_EPS = 1e-6


class Attention(nn.Module):
    """qk_norm: RMSNorm with a learned scale on each head's queries and keys, before RoPE."""

    def __init__(self, dim, num_heads, qk_norm=False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None

    def forward(self, x, rope=None):
        """x: (N, T, D); rope: None or the (cos, signed_sin) tables of the token grid, each (T, head_dim)."""
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            qkv = torch.stack([self.q_norm(qkv[0]).to(qkv.dtype), self.k_norm(qkv[1]).to(qkv.dtype), qkv[2]])
        if rope is None:
            q, k, v = qkv.unbind(0)  # (N, H, T, hd) each
        else:
            q, k = apply_rope(qkv[:2], *rope).unbind(0)  # q and k in one pass
            v = qkv[2]
        out = attend(q, k, v)  # (N, H, T, hd)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))
