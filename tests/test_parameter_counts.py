"""Parameter counts of every named model equal the reference repositories' counts."""
import pytest
import torch

from vlgen.models import MODEL_CONFIGS, create_model


def reference_parameter_count(hidden, depth, patch, llama, in_channels=4, num_classes=1000, latent=32):
    """sum(p.numel() for p in model.parameters()) of the reference DiT / SiT / VisionLLaMA code
    (learn_sigma=True, class dropout 0.1), written out layer by layer from their models.py.
    It includes their frozen sin-cos pos_embed Parameter (1, T, D)."""
    d, tokens, out = hidden, (latent // patch) ** 2, 2 * in_channels
    count = patch * patch * in_channels * d + d  # x_embedder (Conv2d with bias)
    count += 256 * d + d + d * d + d  # t_embedder MLP
    count += (num_classes + 1) * d  # y_embedder incl. the null class
    count += tokens * d  # pos_embed, requires_grad=False but a Parameter
    block = 3 * d * d + 3 * d + d * d + d + 6 * d * d + 6 * d  # qkv, proj, adaLN_modulation
    if llama:
        hidden_mlp = -(-int(2 * 4 * d / 3) // 256) * 256  # find_multiple(int(2 * 4d / 3), 256)
        block += 3 * d * hidden_mlp  # c_fc1, c_fc2, c_proj without bias
    else:
        block += d * 4 * d + 4 * d + 4 * d * d + d  # Mlp fc1, fc2
    count += depth * block
    count += 2 * d * d + 2 * d + d * patch * patch * out + patch * patch * out  # final layer
    return count


def test_published_counts():
    # DiT-XL/2 and SiT-XL/2 print 675,129,632 parameters in their train scripts (DiT paper: 675M).
    assert reference_parameter_count(1152, 28, 2, llama=False) == 675_129_632
    # DiT paper, table 4 (millions, approximate): S 33, B 130, L 458.
    for (hidden, depth), published in {(384, 12): 33, (768, 12): 130, (1024, 24): 458}.items():
        assert abs(reference_parameter_count(hidden, depth, 2, False) / 1e6 - published) < 1


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_every_named_model_matches_reference(name):
    with torch.device("meta"):  # shapes only
        model = create_model(name)
    cfg = model.config
    ours = sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    # We hold the fixed sin-cos table as a computed buffer (DiT) or not at all (LLaMA, unused).
    fixed_table = (cfg.sample_size // cfg.patch_size) ** 2 * cfg.hidden_size
    expected = reference_parameter_count(cfg.hidden_size, cfg.depth, cfg.patch_size, cfg.block_type == "llama")
    assert ours + fixed_table == expected
