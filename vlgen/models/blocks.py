"""adaLN-Zero transformer blocks, composed from an attention and an MLP part, and the final layer.

The VisionLLaMA block (RoPE attention + SwiGLU) and the plain DiT block (attention on
position-embedded tokens + GELU MLP) are the same block with different parts.
"""
import torch
from torch import nn

from vlgen.models.attention import Attention
from vlgen.models.mlp import GeluMLP, SwiGLU, swiglu_hidden_size


def modulate(x, shift, scale):
    """x * (1 + scale) + shift in one pass; x: (N, T, D); shift, scale: (N, 1, D)."""
    return torch.addcmul(shift, x, 1 + scale)


def compute_dtype(x):
    """The dtype autocast runs matmuls in on x's device, or x's own dtype without autocast."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def modulated_norm(norm, x, shift, scale):
    """modulate(norm(x)) in the dtype the next matmul takes: the residual stream x stays float32
    under autocast, while the normalised tokens are kept (for backward) once, in bf16 / fp16,
    instead of as float32 copies beside the cast the matmul makes."""
    dtype = compute_dtype(x)
    return modulate(norm(x).to(dtype), shift.to(dtype), scale.to(dtype))


NORMS = ("layernorm", "rmsnorm")


def token_norm(norm, dim, eps):
    """The normalisation an adaLN block modulates: LayerNorm (DiT's) or RMSNorm (LightningDiT's),
    without affine parameters (adaLN supplies scale and shift)."""
    if norm == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
    if norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps, elementwise_affine=False)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class AdaLNZeroBlock(nn.Module):
    """x + gate * attn(modulate(norm(x))), then x + gate * mlp(modulate(norm(x))), with the six
    shift/scale/gate vectors from one Linear of the activated conditioning SiLU(t_emb + y_emb)."""

    def __init__(self, dim, attn, mlp, norm_eps=1e-6, mlp_norm_eps=1e-6, norm="layernorm"):
        super().__init__()
        self.norm1 = token_norm(norm, dim, norm_eps)
        self.attn = attn
        self.norm2 = token_norm(norm, dim, mlp_norm_eps)
        self.mlp = mlp
        self.adaln = nn.Linear(dim, 6 * dim)

    def forward(self, x, c_act, rope=None):
        """x: (N, T, D); c_act: SiLU of the conditioning, (N, D); rope: (cos, signed_sin) or None."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaln(c_act).unsqueeze(1).chunk(6, dim=-1)
        x = torch.addcmul(x, gate_msa, self.attn(modulated_norm(self.norm1, x, shift_msa, scale_msa), rope))
        x = torch.addcmul(x, gate_mlp, self.mlp(modulated_norm(self.norm2, x, shift_mlp, scale_mlp)))
        return x  # float32 when x is: the residual sums are promoted to it


MLP_TYPES = ("swiglu", "gelu")


def transformer_block(dim, num_heads, mlp_type, mlp_ratio=4.0, norm_eps=1e-6, mlp_norm_eps=1e-6, norm="layernorm",
                      qk_norm=False):
    """One adaLN-Zero block. mlp_type "swiglu": the VisionLLaMA block's SwiGLU at LLaMA's hidden
    width (it gets RoPE tables in forward); "gelu": the plain DiT block's GELU-tanh MLP of width
    mlp_ratio * dim (on position-embedded tokens). norm: the token normalisation (NORMS); qk_norm:
    RMSNorm on each head's queries and keys (LightningDiT's)."""
    if mlp_type == "swiglu":
        mlp = SwiGLU(dim, swiglu_hidden_size(dim))
    elif mlp_type == "gelu":
        mlp = GeluMLP(dim, int(dim * mlp_ratio))
    else:
        raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {mlp_type!r}")
    return AdaLNZeroBlock(dim, Attention(dim, num_heads, qk_norm), mlp, norm_eps, mlp_norm_eps, norm)


class FinalLayer(nn.Module):
    """adaLN shift/scale of the normalised tokens, then Linear to patch_size**2 * out_channels."""

    def __init__(self, dim, patch_size, out_channels, norm_eps=1e-6, norm="layernorm"):
        super().__init__()
        self.norm = token_norm(norm, dim, norm_eps)
        self.adaln = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x, c_act):
        shift, scale = self.adaln(c_act).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulated_norm(self.norm, x, shift, scale))
