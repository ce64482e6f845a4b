import math

import pytest
import torch

from vlgen.models.rope import RotaryEmbedding2D, apply_rope, rope_2d_angles, rotate_real


def _rotate_at(vector, head_dim, grid, positions, auto_scale=False, base=None):
    rope = RotaryEmbedding2D(head_dim, base or grid, auto_scale=auto_scale)
    cos, sin = rope(*grid, "cpu")
    tokens = vector.expand(grid[0] * grid[1], head_dim)
    return apply_rope(tokens, cos, sin)[positions]


def test_logits_depend_only_on_position_difference():
    head_dim, grid = 16, (6, 5)
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, head_dim, generator=generator)
    rope = RotaryEmbedding2D(head_dim, grid, auto_scale=False)
    cos, sin = rope(*grid, "cpu")
    qr = apply_rope(q.expand(30, head_dim), cos, sin)
    kr = apply_rope(k.expand(30, head_dim), cos, sin)
    logits = qr @ kr.T  # (T, T)
    coords = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    by_offset = {}
    for i, (ri, ci) in enumerate(coords):
        for j, (rj, cj) in enumerate(coords):
            by_offset.setdefault((ri - rj, ci - cj), []).append(logits[i, j])
    for values in by_offset.values():
        values = torch.stack(values)
        assert torch.allclose(values, values[0].expand_as(values), atol=1e-5)
    # ...and they do depend on both the row and the column offset.
    assert not torch.isclose(by_offset[(0, 1)][0], by_offset[(0, 0)][0])
    assert not torch.isclose(by_offset[(1, 0)][0], by_offset[(0, 0)][0])
    assert not torch.isclose(by_offset[(1, 0)][0], by_offset[(0, 1)][0])


def test_rotation_preserves_norm_and_origin_is_identity():
    x = torch.randn(4, 3, 12, 8)  # (N, H, T, hd) on a 3x4 grid
    cos, sin = RotaryEmbedding2D(8, (3, 4))(3, 4, "cpu")
    rotated = apply_rope(x, cos, sin)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(rotated[..., 0, :], x[..., 0, :])


def test_rotation_equals_complex_multiplication():
    """The reference applies RoPE as (x0 + i x1) * exp(i angle) per pair."""
    x = torch.randn(2, 12, 8)
    cos, signed_sin = RotaryEmbedding2D(8, (3, 4))(3, 4, "cpu")
    angles = rope_2d_angles(8, 3, 4).float()
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.polar(torch.ones_like(angles), angles))
    assert torch.allclose(apply_rope(x, cos, signed_sin), expected.flatten(-2), atol=1e-5)
    # The real-arithmetic rotation of compiled graphs, in both precisions.
    assert torch.allclose(rotate_real(x, cos, signed_sin), expected.flatten(-2), atol=1e-5)
    assert rotate_real(x.bfloat16(), cos, signed_sin).dtype == torch.bfloat16


def test_pair_layout_matches_reference_convention():
    # Pair 2j rotates by x * theta^(-4j/d), pair 2j+1 by y * theta^(-4j/d).
    head_dim, theta = 8, 10000.0
    angles = rope_2d_angles(head_dim, 3, 4, theta)  # (12, 4)
    token = 2 * 4 + 3  # row 2, column 3
    freqs = [theta ** (-4 * j / head_dim) for j in range(head_dim // 4)]
    expected = [3 * freqs[0], 2 * freqs[0], 3 * freqs[1], 2 * freqs[1]]
    assert torch.allclose(angles[token], torch.tensor(expected, dtype=torch.float64))


def test_as2drope_at_training_grid_equals_plain_rope():
    scaled = RotaryEmbedding2D(16, (8, 8), auto_scale=True)(8, 8, "cpu")
    plain = RotaryEmbedding2D(16, (8, 8), auto_scale=False)(8, 8, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(scaled, plain))


def test_as2drope_scales_positions_by_train_over_current_grid():
    # On a 2x larger grid, position 2i gets the angle that position i had during training.
    base = rope_2d_angles(16, 4, 4)
    cos, _ = RotaryEmbedding2D(16, (4, 4), auto_scale=True)(8, 8, "cpu")
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        big = cos[(2 * row) * 8 + 2 * col, ::2].double()
        assert torch.allclose(big, base[row * 4 + col].cos(), atol=1e-6)
    # Rectangular grids scale each axis by its own ratio.
    angles = rope_2d_angles(8, 2, 8, scale_h=4 / 2, scale_w=4 / 8)
    assert math.isclose(angles[-1, 0].item(), 7 * 0.5) and math.isclose(angles[-1, 1].item(), 1 * 2.0)


def test_head_dim_must_be_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d_angles(6, 2, 2)


def test_class_token_sits_at_flat_index_minus_one():
    """VisionLLaMA's classifier: positions of flat indices -1 ... T-1, x = i mod W, y = floor(i / W),
    so the class token is at column W - 1 of row -1 and the grid tokens keep their angles."""
    head_dim, theta = 8, 10000.0
    with_cls = rope_2d_angles(head_dim, 3, 3, theta, prefix_tokens=1)
    assert with_cls.shape == (10, 4)
    assert torch.equal(with_cls[1:], rope_2d_angles(head_dim, 3, 3, theta))
    freqs = [theta ** (-4 * j / head_dim) for j in range(head_dim // 4)]
    expected = [2 * freqs[0], -1 * freqs[0], 2 * freqs[1], -1 * freqs[1]]
    assert torch.allclose(with_cls[0], torch.tensor(expected, dtype=torch.float64))
    cos, _ = RotaryEmbedding2D(head_dim, (3, 3), prefix_tokens=1)(3, 3, "cpu")
    assert cos.shape == (10, head_dim)
