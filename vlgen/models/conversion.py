"""Load official checkpoints into VisionLLaMADenoiser, and write them back in the official layout.

Formats: "dit" (facebookresearch/DiT), "sit" (willisma/SiT), "visionllama-dit" and
"visionllama-sit" (Meituan-AutoML/VisionLLaMA DiT-LLaMA / SiT-LLaMA); and diffusers'
DiTTransformer2DModel for the plain-DiT variant. The reference `pos_embed` is a fixed sin-cos table
(unused by the LLaMA models); it is dropped on load and recomputed on export.
"""
import argparse
import re

import torch

from vlgen.core.tensor_files import load_tensor_file
from vlgen.models.denoiser import OWN_MLP, VisionLLaMADenoiser
from vlgen.models.embeddings import sincos_pos_embed_2d
from vlgen.models.registry import FAMILIES, SIZES

REFERENCE_FORMATS = {"dit": "DiT", "sit": "SiT", "visionllama-dit": "DiT-LLaMA", "visionllama-sit": "SiT-LLaMA"}

# (reference key, vlgen key) templates; {i} is the block index.
_TOP_LEVEL_KEYS = [
    ("x_embedder.proj.{p}", "patch_embed.{p}"),
    ("t_embedder.mlp.0.{p}", "t_embedder.fc1.{p}"),
    ("t_embedder.mlp.2.{p}", "t_embedder.fc2.{p}"),
    ("final_layer.adaLN_modulation.1.{p}", "final_layer.adaln.{p}"),
    ("final_layer.linear.{p}", "final_layer.linear.{p}"),
]
_BLOCK_KEYS = [
    ("blocks.{i}.adaLN_modulation.1.{p}", "blocks.{i}.adaln.{p}"),
    ("blocks.{i}.attn.qkv.{p}", "blocks.{i}.attn.qkv.{p}"),
    ("blocks.{i}.attn.proj.{p}", "blocks.{i}.attn.proj.{p}"),
]
_DIT_MLP_KEYS = [("blocks.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"), ("blocks.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}")]
_LLAMA_MLP_KEYS = [("blocks.{i}.mlp.c_proj.weight", "blocks.{i}.mlp.down.weight")]
# The SwiGLU gate (c_fc1) and up (c_fc2) projections are one fused matrix here: gate_up = [c_fc1; c_fc2].
_LLAMA_FUSED = ("blocks.{i}.mlp.c_fc1.weight", "blocks.{i}.mlp.c_fc2.weight", "blocks.{i}.mlp.gate_up.weight")
_FIXED_TABLE = "pos_embed"


def expand_key_templates(templates, depth):
    pairs = []
    for ref, ours in templates:
        for i in range(depth) if "{i}" in ref else [None]:
            for p in ("weight", "bias") if "{p}" in ref else [None]:
                pairs.append((ref.format(i=i, p=p), ours.format(i=i, p=p)))
    return pairs


def reference_key_pairs(block_type, depth):
    """All (reference key, vlgen key) renames for a model, except the fused SwiGLU projections."""
    mlp = _LLAMA_MLP_KEYS if block_type == "llama" else _DIT_MLP_KEYS
    return expand_key_templates(_TOP_LEVEL_KEYS + _BLOCK_KEYS + mlp, depth) + [
        ("y_embedder.embedding_table.weight", "y_embedder.table.weight")
    ]


def check_keys(found, expected, what):
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the expected layout: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )


def infer_reference_config(state_dict, source_format, sample_size=None):
    """Model arguments of a reference state dict: widths from shapes, heads from the size table."""
    if source_format not in REFERENCE_FORMATS:
        raise ValueError(f"unknown checkpoint format {source_format!r}; choose from {sorted(REFERENCE_FORMATS)}")
    if "x_embedder.proj.weight" not in state_dict:
        raise ValueError("not a DiT/SiT-style state dict: no 'x_embedder.proj.weight' key")
    hidden, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
    sizes = {cfg["hidden_size"]: name for name, cfg in SIZES.items()}
    if hidden not in sizes:
        raise ValueError(f"hidden size {hidden} is none of the reference sizes {sorted(sizes)}")
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    num_rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    out_dim = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
    if sample_size is None:
        if _FIXED_TABLE not in state_dict:
            raise ValueError("the checkpoint has no pos_embed to infer the input size from: pass sample_size")
        sample_size = int(round(state_dict[_FIXED_TABLE].shape[1] ** 0.5)) * patch
    family = FAMILIES[REFERENCE_FORMATS[source_format]]
    return dict(
        family,
        sample_size=sample_size,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=SIZES[sizes[hidden]]["num_heads"],
        num_classes=num_rows - 1,  # the references always train with a null class (dropout 0.1)
        class_dropout_prob=0.1,
        learn_sigma=out_dim == 2 * in_channels,
        discard_sigma=family["discard_sigma"] and out_dim == 2 * in_channels,
    )


def from_reference_state_dict(state_dict, source_format, sample_size=None):
    """A VisionLLaMADenoiser holding the weights of a reference state dict."""
    config = infer_reference_config(state_dict, source_format, sample_size)
    block_type, depth = config["block_type"], config["depth"]
    pairs = reference_key_pairs(block_type, depth)
    fused = [tuple(t.format(i=i) for t in _LLAMA_FUSED) for i in range(depth)] if block_type == "llama" else []
    expected = [ref for ref, _ in pairs] + [k for gate, up, _ in fused for k in (gate, up)]
    has_swiglu = any(k.endswith("mlp.c_fc1.weight") for k in state_dict)
    if has_swiglu != (block_type == "llama"):
        other = "visionllama-dit or visionllama-sit" if has_swiglu else "dit or sit"
        raise ValueError(f"this checkpoint's MLP keys do not fit format {source_format!r}: it looks like {other}")
    check_keys([k for k in state_dict if k != _FIXED_TABLE], expected, f"{source_format} checkpoint")

    converted = {ours: state_dict[ref] for ref, ours in pairs}
    for gate, up, ours in fused:
        converted[ours] = torch.cat([state_dict[gate], state_dict[up]], dim=0)
    model = VisionLLaMADenoiser(**config)
    load_exact(model, converted)
    return model


def to_reference_state_dict(model):
    """The model's weights under the reference key names (with the reference's fixed pos_embed)."""
    cfg = model.config
    if cfg.get("mlp_type") not in (None, OWN_MLP[cfg.block_type]):
        raise ValueError(f"a {cfg.block_type} model with a {cfg.mlp_type} MLP (an ablation) has no reference "
                         "checkpoint layout to convert to")
    ours = model.state_dict()
    out = {ref: ours[key] for ref, key in reference_key_pairs(cfg.block_type, cfg.depth)}
    if cfg.block_type == "llama":
        for i in range(cfg.depth):
            gate, up, key = (t.format(i=i) for t in _LLAMA_FUSED)
            out[gate], out[up] = ours[key].chunk(2, dim=0)
    out[_FIXED_TABLE] = sincos_pos_embed_2d(cfg.hidden_size, *model.base_grid).unsqueeze(0)
    return out


def load_exact(model, state_dict):
    """load_state_dict that names every missing/unexpected key and shape mismatch."""
    own = model.state_dict()
    check_keys(state_dict, own, "converted state dict")
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state_dict.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError("shape mismatch: " + "; ".join(bad[:8]))
    model.load_state_dict(state_dict)


def load_reference_checkpoint(path, weights="ema"):
    """Read an official .pt: a plain state dict, or a training checkpoint {"model", "ema", ...}
    (EMA weights by default). Loaded with weights_only=True; argparse.Namespace (the references'
    saved "args") is the only extra type allowed."""
    checkpoint = load_tensor_file(path, allowed_types=[argparse.Namespace])
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state dict or a dict of state dicts, got {type(checkpoint).__name__}")
    if "model" in checkpoint or "ema" in checkpoint:
        if weights not in checkpoint:
            raise ValueError(f"{path}: no {weights!r} weights; the checkpoint has {sorted(checkpoint)}")
        checkpoint = checkpoint[weights]
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


# diffusers DiTTransformer2DModel: per-block copies of the shared embedders; separate q/k/v.
_DIFFUSERS_EMB = "transformer_blocks.{i}.norm1.emb."
_DIFFUSERS_KEYS = [
    ("pos_embed.proj.{p}", "patch_embed.{p}"),
    (_DIFFUSERS_EMB.format(i=0) + "timestep_embedder.linear_1.{p}", "t_embedder.fc1.{p}"),
    (_DIFFUSERS_EMB.format(i=0) + "timestep_embedder.linear_2.{p}", "t_embedder.fc2.{p}"),
    (_DIFFUSERS_EMB.format(i=0) + "class_embedder.embedding_table.weight", "y_embedder.table.weight"),
    ("transformer_blocks.{i}.norm1.linear.{p}", "blocks.{i}.adaln.{p}"),
    ("transformer_blocks.{i}.attn1.to_out.0.{p}", "blocks.{i}.attn.proj.{p}"),
    ("transformer_blocks.{i}.ff.net.0.proj.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("transformer_blocks.{i}.ff.net.2.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("proj_out_1.{p}", "final_layer.adaln.{p}"),
    ("proj_out_2.{p}", "final_layer.linear.{p}"),
]


def from_diffusers_dit(dit):
    """The plain-DiT VisionLLaMADenoiser equal to a diffusers DiTTransformer2DModel."""
    cfg = dit.config
    if cfg.norm_type != "ada_norm_zero" or cfg.activation_fn != "gelu-approximate" or cfg.patch_size is None:
        raise ValueError("only class-conditional DiT models (ada_norm_zero, gelu-approximate, patched input) convert")
    depth, sd = cfg.num_layers, dit.state_dict()
    # diffusers keeps one copy of the timestep/label embedders per block; they must all be equal.
    for i in range(1, depth):
        for name, tensor in sd.items():
            if name.startswith(_DIFFUSERS_EMB.format(i=0)):
                other = name.replace(_DIFFUSERS_EMB.format(i=0), _DIFFUSERS_EMB.format(i=i))
                if not torch.equal(sd[other], tensor):
                    raise ValueError(f"{other} differs from block 0: the embedders are not shared, cannot convert")
    out_channels = cfg.out_channels if cfg.out_channels is not None else cfg.in_channels
    label_rows = sd[_DIFFUSERS_EMB.format(i=0) + "class_embedder.embedding_table.weight"].shape[0]
    model = VisionLLaMADenoiser(
        sample_size=cfg.sample_size,
        patch_size=cfg.patch_size,
        in_channels=cfg.in_channels,
        hidden_size=cfg.num_attention_heads * cfg.attention_head_dim,
        depth=depth,
        num_heads=cfg.num_attention_heads,
        block_type="dit",
        num_classes=cfg.num_embeds_ada_norm,
        class_dropout_prob=0.1 if label_rows > cfg.num_embeds_ada_norm else 0.0,  # a null-class row exists
        learn_sigma=out_channels == 2 * cfg.in_channels,
        norm_eps=1e-6,  # diffusers' AdaLayerNormZero and output norms
        mlp_norm_eps=cfg.norm_eps,  # its pre-MLP norm follows the config
        timestep_freq_shift=1,  # diffusers' DiT timestep features use downscale_freq_shift=1
    )
    converted = {ours: sd[ref] for ref, ours in expand_key_templates(_DIFFUSERS_KEYS, depth)}
    for i in range(depth):
        for p in ("weight", "bias"):
            parts = [sd[f"transformer_blocks.{i}.attn1.to_{n}.{p}"] for n in "qkv"]
            converted[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(parts, dim=0)
    load_exact(model, converted)
    return model
