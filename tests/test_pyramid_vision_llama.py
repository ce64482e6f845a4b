"""Pyramid VisionLLaMA: parameter counts, shapes, and its two attentions against the reference math."""
import pytest
import torch
from torch.nn import functional as F

from vlgen.models.mlp import swiglu_hidden_size
from vlgen.models.pyramid_attention import GlobalSubsampledAttention, LocallyGroupedAttention
from vlgen.models.pyramid_vision_llama import PYRAMID_SIZES, PyramidVisionLLaMA, create_pyramid_vision_llama

TINY = dict(image_size=64, embed_dims=(16, 32, 32, 64), num_heads=(1, 2, 2, 4), depths=(2, 2, 2, 2),
            window_sizes=(3, 3, 3, 3))


def expected_parameters(dims, depths, sr_ratios=(8, 4, 2, 1), patch=4, channels=3):
    """Closed form of the reference layout (twins_llama.py PyramidVisionLLaMA with qkv bias, LayerScale
    GroupBlocks, per-stage output norms): even blocks LSA (qkv, proj), odd blocks GSA (q, kv, proj,
    and for sr > 1 the sr x sr reduction conv with its LayerNorm)."""
    total, previous = 0, channels
    for i, (dim, depth, sr) in enumerate(zip(dims, depths, sr_ratios)):
        stride = patch if i == 0 else 2
        total += previous * stride * stride * dim + dim + 2 * dim  # patch conv, its LayerNorm
        common = 4 * dim + 2 * dim + 3 * dim * swiglu_hidden_size(dim) + dim * dim + dim  # norms, gammas, SwiGLU, proj
        lsa = 3 * dim * dim + 3 * dim
        gsa = dim * dim + dim + 2 * dim * dim + 2 * dim + (dim * dim * sr * sr + dim + 2 * dim if sr > 1 else 0)
        total += sum(common + (lsa if j % 2 == 0 else gsa) for j in range(depth)) + 2 * dim  # + stage norm
        previous = dim
    return total


@pytest.mark.parametrize("size", PYRAMID_SIZES)
def test_parameter_counts_and_output_shapes_of_every_size(size):
    with torch.device("meta"):
        model = create_pyramid_vision_llama(size)
        features = model(torch.empty(2, 3, 224, 160))
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(PYRAMID_SIZES[size]["embed_dims"],
                                                                             PYRAMID_SIZES[size]["depths"])
    dims = PYRAMID_SIZES[size]["embed_dims"]
    assert [tuple(f.shape) for f in features] == [(2, dims[0], 56, 40), (2, dims[1], 28, 20), (2, dims[2], 14, 10),
                                                  (2, dims[3], 7, 5)]
    assert model.strides == [4, 8, 16, 32] and model.out_channels == list(dims)


def test_every_parameter_gets_a_gradient_with_peg():
    model = PyramidVisionLLaMA(**TINY, position_encoding_generator=True)
    features = model(torch.randn(2, 3, 64, 96))
    sum(f.square().mean() for f in features).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def _complex_rope(x, positions, theta=10000.0):
    """The reference's rotation: pairs as complex numbers times exp(i * angle); pair 2j rotates
    with x, pair 2j+1 with y, frequency theta^(-4j/hd). x (..., T, hd); positions (T, 2) as (x, y)."""
    hd = x.shape[-1]
    freqs = theta ** (-torch.arange(0, hd, 4, dtype=torch.float64) / hd)
    angles = torch.stack([positions[:, :1] * freqs, positions[:, 1:] * freqs], dim=-1).flatten(1)  # (T, hd/2)
    rotated = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous()) * torch.polar(
        torch.ones_like(angles), angles)
    return torch.view_as_real(rotated).flatten(-2).float()


def test_locally_grouped_attention_is_rope_attention_inside_each_padded_window():
    torch.manual_seed(0)
    dim, heads, ws, grid_h, grid_w = 16, 2, 3, 5, 7  # 5x7 pads to 6x9: 2x3 windows
    attn = LocallyGroupedAttention(dim, heads, ws)
    x = torch.randn(2, grid_h * grid_w, dim)
    out = attn(x, grid_h, grid_w)

    padded = F.pad(x.view(2, grid_h, grid_w, dim), (0, 0, 0, 2, 0, 1))
    local = torch.tensor([(c, r) for r in range(ws) for c in range(ws)], dtype=torch.float64)  # (x, y) in the window
    expected = torch.zeros(2, 6, 9, dim)
    for r in range(0, 6, ws):
        for c in range(0, 9, ws):
            tokens = padded[:, r:r + ws, c:c + ws].reshape(2, ws * ws, dim)
            q, k, v = attn.qkv(tokens).view(2, ws * ws, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            q, k = _complex_rope(q, local), _complex_rope(k, local)
            weights = (q @ k.transpose(-1, -2) / (dim // heads) ** 0.5).softmax(-1)
            mixed = (weights @ v).transpose(1, 2).reshape(2, ws, ws, dim)
            expected[:, r:r + ws, c:c + ws] = attn.proj(mixed)
    torch.testing.assert_close(out, expected[:, :grid_h, :grid_w].reshape(2, -1, dim), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sr", [1, 2, 4])
def test_global_subsampled_attention_matches_the_reference_positions(sr):
    torch.manual_seed(0)
    dim, heads, grid = 16, 2, 8
    attn = GlobalSubsampledAttention(dim, heads, sr, base_grid=(grid, grid))
    x = torch.randn(2, grid * grid, dim)
    out = attn(x, grid, grid)

    hd = dim // heads
    q = attn.q(x).view(2, -1, heads, hd).transpose(1, 2)
    summary = x
    if sr > 1:
        summary = attn.norm(F.conv2d(x.transpose(1, 2).reshape(2, dim, grid, grid), attn.sr.weight, attn.sr.bias,
                                     stride=sr).flatten(2).transpose(1, 2))
    k, v = attn.kv(summary).view(2, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)
    # Reference (precompute_freqs_cis_2d_general): query i at (i % W, i // W); summary token i at
    # ((i % W) * sr + b, (i // W) * sr + b), b = 1 - 1/sr, with W the full grid width.
    index = torch.arange(grid * grid, dtype=torch.float64)
    q_pos = torch.stack([index % grid, index // grid], dim=1)
    m = torch.arange((grid // sr) ** 2, dtype=torch.float64)
    k_pos = torch.stack([(m % grid) * sr, (m // grid) * sr], dim=1) + (1 - 1 / sr)
    weights = (_complex_rope(q, q_pos) @ _complex_rope(k, k_pos).transpose(-1, -2) / hd ** 0.5).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, -1, dim))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_auto_scaled_rope_of_global_attention_at_another_resolution():
    attn = GlobalSubsampledAttention(16, 2, 2, base_grid=(8, 8))
    (q_cos, _), (k_cos, _) = attn.rope(12, 16, "cpu")  # 1.5x the rows, 2x the columns
    plain = GlobalSubsampledAttention(16, 2, 2, base_grid=(8, 8), rope_auto_scale=False)
    (q_cos_plain, _), _ = plain.rope(12, 16, "cpu")
    index = torch.arange(12 * 16, dtype=torch.float64)
    freqs = 10000.0 ** (-torch.arange(0, 8, 4, dtype=torch.float64) / 8)  # head_dim 8
    x_angles, y_angles = (index % 16)[:, None] * 0.5 * freqs, (index // 16)[:, None] * (8 / 12) * freqs
    torch.testing.assert_close(q_cos[:, 0::4].double(), x_angles.cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(q_cos[:, 2::4].double(), y_angles.cos(), atol=1e-6, rtol=0)
    assert not torch.allclose(q_cos, q_cos_plain) and k_cos.shape == (6 * 8, 8)


def test_bad_inputs_are_clear_errors():
    model = PyramidVisionLLaMA(**TINY)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        model(torch.randn(1, 3, 64, 48))
    with pytest.raises(ValueError, match="one entry per stage"):
        PyramidVisionLLaMA(**{**TINY, "depths": (2, 2, 2)})
    with pytest.raises(ValueError, match="image_size 48 is not a multiple of 32"):
        PyramidVisionLLaMA(**{**TINY, "image_size": 48})
    with pytest.raises(ValueError, match="unknown pyramid VisionLLaMA size 'XL'"):
        create_pyramid_vision_llama("XL")
