"""Plain VisionLLaMA backbone and the classifier on it."""
import pytest
import torch
from torch.nn import functional as F

from vlgen.models.mlp import swiglu_hidden_size
from vlgen.models.rope import rope_2d_angles
from vlgen.models.vision_llama import PLAIN_SIZES, create_vision_llama
from vlgen.tasks.classification import VisionLLaMAClassifier, create_classifier
from vlgen.data.shapes import ShapesDataset

TINY = dict(image_size=32, patch_size=4, hidden_size=32, depth=2, num_heads=2)


def expected_parameters(hidden, depth, patch=16, channels=3, classes=1000):
    """Closed form of the reference layout (deit/my_models.py, LAMABlock): per block two affine
    LayerNorms, qkv and proj with biases, two LayerScale vectors, a bias-free SwiGLU; plus the
    patch embedding, class token, final LayerNorm and the head."""
    ffn = swiglu_hidden_size(hidden)
    block = 4 * hidden + (3 * hidden * hidden + 3 * hidden) + (hidden * hidden + hidden) + 2 * hidden + 3 * hidden * ffn
    return depth * block + channels * patch * patch * hidden + hidden + hidden + 2 * hidden + hidden * classes + classes


@pytest.mark.parametrize("size, millions", [("S", 22), ("B", 86), ("L", 310)])
def test_parameter_counts_of_the_paper_sizes(size, millions):
    with torch.device("meta"):
        model = create_classifier(size)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(PLAIN_SIZES[size]["hidden_size"], PLAIN_SIZES[size]["depth"])
    assert round(count / 1e6) == millions  # the paper's table: 22M, 86M, 310M


@pytest.mark.parametrize("size", PLAIN_SIZES)
def test_output_shapes_of_every_size(size):
    with torch.device("meta"):
        backbone = create_vision_llama(size)
        pooled, feature_map = backbone(torch.empty(2, 3, 224, 160))
    width = PLAIN_SIZES[size]["hidden_size"]
    assert pooled.shape == (2, width) and feature_map.shape == (2, width, 14, 10)


def test_every_parameter_gets_a_gradient():
    model = create_classifier("S", 10, **TINY)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_class_token_rope_and_auto_scaling():
    backbone = create_vision_llama("S", **TINY)
    cos, _ = backbone.rope(8, 8, "cpu")  # the class token first, then the 8x8 grid
    angles = rope_2d_angles(16, 8, 8, prefix_tokens=1)
    torch.testing.assert_close(cos[:, ::2].double(), angles.cos(), atol=1e-6, rtol=0)
    cos_big, _ = backbone.rope(12, 12, "cpu")  # 1.5x: positions scaled by 8 / 12
    scaled = rope_2d_angles(16, 12, 12, scale_h=8 / 12, scale_w=8 / 12, prefix_tokens=1)
    torch.testing.assert_close(cos_big[:, ::2].double(), scaled.cos(), atol=1e-6, rtol=0)


def test_mean_pooling_without_class_token():
    backbone = create_vision_llama("S", **TINY, class_token=False)
    pooled, feature_map = backbone(torch.randn(2, 3, 32, 32))
    assert pooled.shape == (2, 32) and feature_map.shape == (2, 32, 8, 8)
    assert sum(p.numel() for p in backbone.parameters()) == sum(
        p.numel() for p in create_vision_llama("S", **TINY).parameters()) - 32


def test_save_and_load_round_trip(tmp_path):
    model = create_classifier("S", 10, **TINY)
    model.save_pretrained(tmp_path / "classifier")
    loaded = VisionLLaMAClassifier.from_pretrained(tmp_path / "classifier")
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))


def test_bad_inputs_are_clear_errors():
    backbone = create_vision_llama("S", **TINY)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        backbone(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        backbone(torch.randn(2, 3, 30, 32))
    with pytest.raises(ValueError, match="unknown VisionLLaMA size 'XL'"):
        create_classifier("XL")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_classifier("S", 0, **TINY)


def reference_state_dict(hidden=32, depth=2, patch=4, classes=10):
    """Random weights under the reference key names (deit/my_models.py, LAMABlock, LLaMAMLP)."""
    generator = torch.Generator().manual_seed(0)
    ffn = swiglu_hidden_size(hidden)
    shapes = {"patch_embed.proj.weight": (hidden, 3, patch, patch), "patch_embed.proj.bias": (hidden,),
              "cls_token": (1, 1, hidden), "norm.weight": (hidden,), "norm.bias": (hidden,),
              "head.weight": (classes, hidden), "head.bias": (classes,)}
    for i in range(depth):
        shapes.update({f"blocks.{i}.norm1.weight": (hidden,), f"blocks.{i}.norm1.bias": (hidden,),
                       f"blocks.{i}.attn.qkv.weight": (3 * hidden, hidden), f"blocks.{i}.attn.qkv.bias": (3 * hidden,),
                       f"blocks.{i}.attn.proj.weight": (hidden, hidden), f"blocks.{i}.attn.proj.bias": (hidden,),
                       f"blocks.{i}.gamma_1": (hidden,), f"blocks.{i}.gamma_2": (hidden,),
                       f"blocks.{i}.norm2.weight": (hidden,), f"blocks.{i}.norm2.bias": (hidden,),
                       f"blocks.{i}.mlp.c_fc1.weight": (ffn, hidden), f"blocks.{i}.mlp.c_fc2.weight": (ffn, hidden),
                       f"blocks.{i}.mlp.c_proj.weight": (hidden, ffn)})
    return {key: torch.randn(shape, generator=generator) * 0.2 for key, shape in shapes.items()}


def reference_forward(sd, images, heads, scale=1.0, theta=10000.0):
    """The reference classifier's forward, written from its code: complex RoPE over positions
    arange(-1, N) (x = i % side, y = i // side, times scale), pairs interleaved x, y."""
    patch = sd["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    side = tokens.shape[-1]
    tokens = tokens.flatten(2).transpose(1, 2)
    batch, count, width = tokens.shape
    tokens = torch.cat([sd["cls_token"].expand(batch, -1, -1), tokens], dim=1)
    head_dim = width // heads
    flat = torch.arange(-1, count)
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim)
    x_cis = torch.polar(torch.ones(count + 1, head_dim // 4), torch.outer((flat % side) * scale, freqs).float())
    y_cis = torch.polar(torch.ones(count + 1, head_dim // 4), torch.outer((flat // side) * scale, freqs).float())
    freqs_cis = torch.cat([x_cis.unsqueeze(-1), y_cis.unsqueeze(-1)], dim=-1).reshape(count + 1, -1)

    def rotate(t):  # (B, N, H, hd)
        complex_t = torch.view_as_complex(t.float().reshape(*t.shape[:-1], -1, 2))
        return torch.view_as_real(complex_t * freqs_cis[None, :, None, :]).flatten(3)

    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(tokens, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(batch, count + 1, 3, heads, head_dim)
        q, k, v = (rotate(qkv[:, :, 0]), rotate(qkv[:, :, 1]), qkv[:, :, 2])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * head_dim**-0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, count + 1, width)
        tokens = tokens + sd[p + "gamma_1"] * F.linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(tokens, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        mlp = F.linear(F.silu(F.linear(h, sd[p + "mlp.c_fc1.weight"])) * F.linear(h, sd[p + "mlp.c_fc2.weight"]),
                       sd[p + "mlp.c_proj.weight"])
        tokens = tokens + sd[p + "gamma_2"] * mlp
    tokens = F.layer_norm(tokens, (width,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return F.linear(tokens[:, 0], sd["head.weight"], sd["head.bias"])


def test_reference_checkpoint_loads_and_matches_the_reference_forward(tmp_path):
    import argparse

    from vlgen.tasks.classifier_weights import from_reference_classifier, load_reference_classifier

    sd = reference_state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model="vit_llama_rope_small_patch16"), "epoch": 3}, path)
    model = load_reference_classifier(path, image_size=32, num_heads=2)
    assert (model.backbone.config.depth, model.backbone.config.patch_size, model.head.out_features) == (2, 4, 10)
    images = torch.randn(2, 3, 32, 32)
    heads = 2
    torch.testing.assert_close(model(images), reference_forward(sd, images, heads), atol=1e-5, rtol=1e-5)
    big = torch.randn(2, 3, 48, 48)  # AS2DRoPE = the reference's auto_scale (positions x 32 / 48)
    torch.testing.assert_close(model(big), reference_forward(sd, big, heads, scale=32 / 48), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="missing keys"):
        from_reference_classifier({k: v for k, v in sd.items() if k != "blocks.1.gamma_2"}, num_heads=2)
    with pytest.raises(ValueError, match="pass num_heads"):
        from_reference_classifier(sd)
    with pytest.raises(ValueError, match="not a plain VisionLLaMA classification state dict"):
        from_reference_classifier({"pos_embed": torch.zeros(1)})


@pytest.mark.slow
def test_train_classifier_fits_its_data_and_checks_classes():
    from accelerate.state import AcceleratorState

    from vlgen.tasks.classification import accuracy, train_classifier

    data = ShapesDataset(32, 64)
    torch.manual_seed(0)
    model = create_classifier("S", 10, **{**TINY, "hidden_size": 64, "depth": 4}, layer_scale_init=0.1)
    before = accuracy(model, data)
    losses = train_classifier(model, data, steps=120, batch_size=64, lr=1e-3, random_flip=False, progress=False)
    after = accuracy(model, data)
    AcceleratorState._reset_state(reset_partial_state=True)
    print(f"train accuracy {before:.2f} -> {after:.2f}, loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    assert len(losses) == 120 and losses[-1] < losses[0] / 3 and after >= 0.9
    with pytest.raises(ValueError, match="the model has 5 classes, the dataset 10"):
        train_classifier(create_classifier("S", 5, **TINY), data, steps=1)


@pytest.mark.slow
def test_classifier_learns_shapes_and_keeps_accuracy_at_1_5x_with_as2drope():
    """650 steps of batch 32 on shapes (about a minute on 2 cores), then held-out accuracy at the
    training size and at 1.5x (48 px, a 12x12 token grid) with AS2DRoPE and with unscaled positions.
    Measured: 0.978 at 32 px; at 48 px 0.970 with AS2DRoPE, 0.304 unscaled (chance 0.1)."""
    from accelerate.state import AcceleratorState

    from vlgen.tasks.classification import accuracy, train_classifier

    torch.manual_seed(0)
    model = create_classifier("S", 10, image_size=32, patch_size=4, hidden_size=96, depth=3, num_heads=6,
                              layer_scale_init=0.1)
    train_classifier(model, ShapesDataset(32, 20000), steps=650, batch_size=32, lr=2e-3, progress=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    at_32 = accuracy(model, ShapesDataset(32, 500, seed=1))
    scaled_48 = accuracy(model, ShapesDataset(48, 500, seed=1))
    model.backbone.rope.auto_scale = False
    model.backbone.rope._cache.clear()
    unscaled_48 = accuracy(model, ShapesDataset(48, 500, seed=1))
    print(f"accuracy: 32 px {at_32:.3f}; 48 px AS2DRoPE {scaled_48:.3f}, unscaled {unscaled_48:.3f}")
    assert at_32 >= 0.8  # chance is 0.1
    assert scaled_48 >= at_32 - 0.05 and scaled_48 >= unscaled_48 + 0.3
