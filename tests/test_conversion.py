"""Official checkpoint formats: key names and shapes of facebookresearch/DiT, willisma/SiT,
Meituan-AutoML/VisionLLaMA (dit/ and sit/ models.py) and diffusers' DiTTransformer2DModel."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel

from vlgen.models import VisionLLaMADenoiser
from vlgen.models.conversion import (
    from_diffusers_dit,
    from_reference_state_dict,
    load_reference_checkpoint,
    to_reference_state_dict,
)
from vlgen.models.embeddings import sincos_pos_embed_2d

DEPTH, PATCH, C, CLASSES, LATENT = 2, 4, 4, 10, 16
VLGEN = str(Path(sys.executable).parent / "vlgen")


def reference_state_dict(llama, hidden=384, depth=DEPTH, patch=PATCH, seed=0):
    """Random weights under the reference key names and shapes (learn_sigma=True, dropout 0.1)."""
    d, mlp_hidden = hidden, -(-int(8 * hidden / 3) // 256) * 256
    shapes = {
        "pos_embed": (1, (LATENT // patch) ** 2, d),
        "x_embedder.proj.weight": (d, C, patch, patch),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (CLASSES + 1, d),
        "final_layer.linear.weight": (patch * patch * 2 * C, d),
        "final_layer.linear.bias": (patch * patch * 2 * C,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "adaLN_modulation.1.weight": (6 * d, d), b + "adaLN_modulation.1.bias": (6 * d,),
        })
        if llama:
            shapes.update({
                b + "mlp.c_fc1.weight": (mlp_hidden, d), b + "mlp.c_fc2.weight": (mlp_hidden, d),
                b + "mlp.c_proj.weight": (d, mlp_hidden),
            })
        else:
            shapes.update({
                b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,),
            })
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=generator) * 0.05 for k, shape in shapes.items()}
    state["pos_embed"] = sincos_pos_embed_2d(d, LATENT // patch, LATENT // patch).unsqueeze(0)
    return state


FORMATS = {"dit": False, "sit": False, "visionllama-dit": True, "visionllama-sit": True}


@pytest.mark.parametrize("source", list(FORMATS))
def test_mapping_is_complete_and_round_trips(source):
    reference = reference_state_dict(FORMATS[source])
    model = from_reference_state_dict(reference, source)
    cfg = model.config
    assert (cfg.block_type == "llama") == FORMATS[source]
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.patch_size) == (384, DEPTH, 6, PATCH)
    assert (cfg.sample_size, cfg.num_classes, cfg.learn_sigma) == (LATENT, CLASSES, True)
    assert cfg.discard_sigma == source.endswith("sit")
    back = to_reference_state_dict(model)
    assert back.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(back[key], value), key


def test_swiglu_halves_map_to_gate_and_up():
    reference = reference_state_dict(llama=True)
    model = from_reference_state_dict(reference, "visionllama-dit")
    x = torch.randn(5, 384)
    gate, up = reference["blocks.0.mlp.c_fc1.weight"], reference["blocks.0.mlp.c_fc2.weight"]
    expected = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ reference["blocks.0.mlp.c_proj.weight"].T
    assert torch.allclose(model.blocks[0].mlp(x), expected, atol=1e-5)


def test_an_ablation_model_has_no_reference_layout():
    model = VisionLLaMADenoiser(hidden_size=32, depth=1, num_heads=2, block_type="dit", mlp_type="swiglu")
    with pytest.raises(ValueError, match="ablation"):
        to_reference_state_dict(model)


def test_missing_unexpected_and_misshapen_keys_are_named():
    reference = reference_state_dict(llama=False)
    missing = dict(reference)
    del missing["blocks.1.attn.proj.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.attn.proj.bias'\]"):
        from_reference_state_dict(missing, "dit")
    with pytest.raises(ValueError, match="looks like dit or sit"):
        from_reference_state_dict(reference, "visionllama-dit")  # a DiT checkpoint is no DiT-LLaMA one
    extra = dict(reference, **{"blocks.0.attn.q_norm.weight": torch.ones(64)})
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.0.attn.q_norm.weight'\]"):
        from_reference_state_dict(extra, "dit")
    misshapen = dict(reference, **{"blocks.0.attn.qkv.weight": torch.zeros(3 * 384, 383)})
    with pytest.raises(ValueError, match=r"blocks.0.attn.qkv.weight: checkpoint \(1152, 383\)"):
        from_reference_state_dict(misshapen, "dit")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        from_reference_state_dict(reference, "unet")


def test_training_checkpoint_takes_ema_by_default(tmp_path):
    ema, raw = reference_state_dict(False, seed=1), reference_state_dict(False, seed=2)
    path = tmp_path / "0400000.pt"
    torch.save({"model": raw, "ema": ema, "opt": {}, "args": argparse.Namespace(model="DiT-S/4")}, path)
    assert torch.equal(load_reference_checkpoint(path)["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"])
    assert torch.equal(load_reference_checkpoint(path, "model")["pos_embed"], raw["pos_embed"])
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in raw.items()}, ddp)
    assert load_reference_checkpoint(ddp).keys() == raw.keys()


def test_untrusted_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"ema": reference_state_dict(False), "payload": subprocess.Popen}, path)
    with pytest.raises(ValueError, match="not a plain tensor checkpoint") as refused:
        load_reference_checkpoint(path)
    assert "weights_only=False" not in str(refused.value)


@pytest.mark.slow
def test_convert_command_writes_a_pretrained_directory(tmp_path):
    reference = reference_state_dict(llama=True)
    checkpoint = tmp_path / "SiT-LLaMA.pt"
    torch.save({"model": reference, "ema": reference}, checkpoint)
    out = tmp_path / "converted"
    result = subprocess.run(
        [VLGEN, "convert", str(checkpoint), "--from", "visionllama-sit", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    loaded = VisionLLaMADenoiser.from_pretrained(out).eval()
    direct = from_reference_state_dict(reference, "visionllama-sit").eval()
    x, t, y = torch.randn(2, C, LATENT, LATENT), torch.tensor([0.1, 0.9]), torch.tensor([3, CLASSES])
    assert torch.equal(loaded(x, t, y), direct(x, t, y))
    assert loaded(x, t, y).shape == (2, C, LATENT, LATENT)  # SiT drops the variance half

    bad = subprocess.run(
        [VLGEN, "convert", str(tmp_path / "nope.pt"), "--from", "dit", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "No such file" in bad.stderr


def test_diffusers_dit_loads_into_the_plain_dit_variant():
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=C, out_channels=2 * C, num_layers=2,
        sample_size=LATENT, patch_size=2, num_embeds_ada_norm=CLASSES,
    ).eval()
    with torch.no_grad():  # diffusers keeps one embedder copy per block: make them shared, and non-zero
        for name, param in dit.named_parameters():
            if ".norm1.emb." not in name or name.startswith("transformer_blocks.0."):
                param.normal_(std=0.1)
        for block in dit.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(dit.transformer_blocks[0].norm1.emb.state_dict())
    model = from_diffusers_dit(dit).eval()
    x, t, y = torch.randn(3, C, LATENT, LATENT), torch.tensor([1, 500, 999]), torch.tensor([0, 7, CLASSES])
    with torch.no_grad():
        expected = dit(x, timestep=t, class_labels=y).sample
        got = model(x, t, y)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()

    with torch.no_grad():
        dit.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1.0)
    with pytest.raises(ValueError, match="differs from block 0"):
        from_diffusers_dit(dit)
