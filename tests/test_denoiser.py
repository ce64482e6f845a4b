import pytest
import torch

from conftest import tiny_model
from vlgen.models import VisionLLaMADenoiser, create_model
from vlgen.models.registry import FAMILIES, PATCH_SIZES

FAMILY_NAMES = [f"{family}-S/2" for family in FAMILIES]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("patch", PATCH_SIZES)
def test_output_shapes(family, patch):
    model = tiny_model(f"{family}-S/{patch}")
    x = torch.randn(2, 4, 16, 16)
    out = model(x, torch.tensor([5, 6]), torch.tensor([1, 2]))
    expected_channels = 4 if family.startswith("SiT") else 8
    assert out.shape == (2, expected_channels, 16, 16) == (2, model.out_channels, 16, 16)
    # A rectangular input of another size works too (AS2DRoPE / recomputed sin-cos table).
    wide = model(torch.randn(1, 4, 16, 32), torch.tensor([5]), torch.tensor([1]))
    assert wide.shape == (1, expected_channels, 16, 32)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_forward_backward_every_parameter_gets_a_gradient(name, inputs):
    model = tiny_model(name).train()
    x, t, y = inputs
    out = model(x, t, y)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        if not pname.startswith("y_embedder"):  # rows of unseen labels legitimately get none
            assert param.grad.abs().sum() > 0, pname


def test_reference_initialisation_outputs_zero(inputs):
    model = create_model("DiT-LLaMA-S/2", hidden_size=32, depth=2, num_heads=2, sample_size=16, num_classes=10)
    assert torch.equal(model(*inputs), torch.zeros(3, 8, 16, 16))


def test_cfg_scale_one_equals_conditional(inputs):
    model = tiny_model()
    x, t, y = inputs
    assert torch.allclose(model.forward_with_cfg(x, t, y, guidance_scale=1.0), model(x, t, y), atol=1e-5)


def test_cfg_formula_and_variance_channels(inputs):
    model = tiny_model()
    x, t, y = inputs
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, model.null_class_id))
    guided = model.forward_with_cfg(x, t, y, guidance_scale=4.0)
    assert torch.allclose(guided[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-4)
    assert torch.allclose(guided[:, 4:], cond[:, 4:], atol=1e-5)  # learned variance is never guided
    # DiT's quirk on request: only the first 3 channels are guided.
    quirk = model.forward_with_cfg(x, t, y, guidance_scale=4.0, guided_channels=3)
    assert torch.allclose(quirk[:, :3], guided[:, :3], atol=1e-5)
    assert torch.allclose(quirk[:, 3:], cond[:, 3:], atol=1e-5)


def test_cfg_runs_one_batched_forward(inputs):
    model = tiny_model()
    calls = []
    model.patch_embed.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    model.forward_with_cfg(*inputs, guidance_scale=2.0)
    assert calls == [6]


def test_cfg_needs_a_null_class(inputs):
    model = tiny_model(class_dropout_prob=0.0)
    with pytest.raises(ValueError, match="null class"):
        model.forward_with_cfg(*inputs, guidance_scale=2.0)


def test_save_pretrained_round_trip(tmp_path, inputs):
    model = tiny_model("SiT-LLaMA-S/4")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = VisionLLaMADenoiser.from_pretrained(tmp_path).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(loaded.config) == public(model.config)
    assert torch.equal(loaded(*inputs), model(*inputs))


@pytest.mark.parametrize("name", ["DiT-LLaMA-S/2", "DiT-S/2"])
def test_gradient_checkpointing_gives_same_gradients(name, inputs):
    def grads(checkpointing):
        model = tiny_model(name).train()
        model.y_embedder.dropout_prob = 0.0  # label dropout is random: keep the two runs equal
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(*inputs).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name_ in plain:
        assert torch.allclose(plain[name_], checkpointed[name_], atol=1e-6), name_


def test_label_dropout_uses_the_null_class_in_training():
    model = tiny_model(class_dropout_prob=1.0).train()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([1, 2])
    null = torch.full((2,), model.null_class_id)
    assert torch.equal(model(x, t, torch.tensor([3, 4])), model(x, t, null))


def test_a_label_drop_mask_drops_exactly_those_labels():
    model = tiny_model().train()  # class_dropout_prob 0.1: random drops unless a mask is given
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([1, 2, 3]), torch.tensor([3, 4, 5])
    mask = torch.tensor([True, False, True])
    expected = model.eval()(x, t, torch.tensor([model.null_class_id, 4, model.null_class_id]))
    assert torch.equal(model.train()(x, t, y, drop_labels=mask), expected)
    assert torch.equal(model(x, t, y, drop_labels=torch.zeros(3, dtype=torch.bool)), model.eval()(x, t, y))
    with pytest.raises(ValueError, match="needs a null class"):
        tiny_model(class_dropout_prob=0.0)(x, t, y, drop_labels=mask)


@pytest.mark.parametrize(
    "x_shape, labels, message",
    [
        ((2, 3, 16, 16), [0, 1], "in_channels=4"),
        ((2, 4, 17, 16), [0, 1], "not divisible by patch_size 2"),
        ((2, 4, 16, 16), [0, 11], r"label out of range \[0, 10\]"),
        ((2, 4, 16, 16), [-1, 0], "label out of range"),
        ((2, 4, 16, 16), [0.0, 1.0], "integer tensor"),
        ((2, 4, 16, 16), [0, 1, 2], "integer tensor of shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(x_shape, labels, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*x_shape), torch.tensor([1, 2]), torch.tensor(labels))


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'DiT-XXL/2'"):
        create_model("DiT-XXL/2")
    with pytest.raises(ValueError, match="block_type"):
        VisionLLaMADenoiser(block_type="unet")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        VisionLLaMADenoiser(hidden_size=30, num_heads=4, depth=1)




@pytest.mark.parametrize("name, mlp_type", [("DiT-LLaMA-S/2", "gelu"), ("DiT-S/2", "swiglu")])
def test_ablation_swaps_the_mlp_and_keeps_the_position_encoding(name, mlp_type):
    """mlp_type gives a block type the other's MLP; positions stay the block type's (RoPE for
    llama, the sin-cos table for dit), and the swapped model still round-trips its config."""
    own, swapped = tiny_model(name), tiny_model(name, mlp_type=mlp_type)
    mlp_class = {"gelu": "GeluMLP", "swiglu": "SwiGLU"}[mlp_type]
    assert all(type(block.mlp).__name__ == mlp_class for block in swapped.blocks)
    assert type(own.blocks[0].mlp).__name__ != mlp_class
    assert (swapped.rope is None) == (own.rope is None) == (name == "DiT-S/2")
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([3, 500]), torch.tensor([1, 2])
    assert swapped(x, t, y).shape == own(x, t, y).shape
    assert VisionLLaMADenoiser.from_config(swapped.config).config.mlp_type == mlp_type


def test_an_unknown_mlp_type_is_refused():
    with pytest.raises(ValueError, match="mlp_type must be one of"):
        VisionLLaMADenoiser(hidden_size=32, depth=1, num_heads=2, mlp_type="relu")
