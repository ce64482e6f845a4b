"""Official VisionLLaMA classification checkpoints (Meituan-AutoML/VisionLLaMA, deit/my_models.py:
`vit_llama_rope_{small,base,large}_patch16`, class token, LayerScale LAMABlocks) as
VisionLLaMAClassifier. Sizes come from the weight shapes, heads from the paper's size table."""
import re

import torch

from vlgen.models.conversion import check_keys, expand_key_templates, load_exact, load_reference_checkpoint
from vlgen.models.vision_llama import PLAIN_SIZES
from vlgen.tasks.classification import VisionLLaMAClassifier

# (reference key, vlgen key) templates; {i} is the block index, {p} weight / bias.
_KEYS = [
    ("patch_embed.proj.{p}", "backbone.patch_embed.{p}"),
    ("cls_token", "backbone.cls_token"),
    ("norm.{p}", "backbone.norm.{p}"),
    ("head.{p}", "head.{p}"),
    ("blocks.{i}.norm1.{p}", "backbone.blocks.{i}.norm1.{p}"),
    ("blocks.{i}.attn.qkv.{p}", "backbone.blocks.{i}.attn.qkv.{p}"),
    ("blocks.{i}.attn.proj.{p}", "backbone.blocks.{i}.attn.proj.{p}"),
    ("blocks.{i}.gamma_1", "backbone.blocks.{i}.gamma_1"),
    ("blocks.{i}.norm2.{p}", "backbone.blocks.{i}.norm2.{p}"),
    ("blocks.{i}.gamma_2", "backbone.blocks.{i}.gamma_2"),
    ("blocks.{i}.mlp.c_proj.weight", "backbone.blocks.{i}.mlp.down.weight"),
]
# The SwiGLU gate (c_fc1) and up (c_fc2) projections are one fused matrix here: gate_up = [c_fc1; c_fc2].
_FUSED = ("blocks.{i}.mlp.c_fc1.weight", "blocks.{i}.mlp.c_fc2.weight", "backbone.blocks.{i}.mlp.gate_up.weight")


def from_reference_classifier(state_dict, image_size=224, num_heads=None):
    """A VisionLLaMAClassifier holding a reference classification state dict (the "model" entry
    of the official .pth). num_heads: default from the paper's size of that width."""
    if "cls_token" not in state_dict or "patch_embed.proj.weight" not in state_dict:
        raise ValueError("not a plain VisionLLaMA classification state dict: no cls_token / patch_embed.proj.weight")
    hidden, channels, patch, _ = state_dict["patch_embed.proj.weight"].shape
    heads = {cfg["hidden_size"]: cfg["num_heads"] for cfg in PLAIN_SIZES.values()}
    if num_heads is None and hidden not in heads:
        raise ValueError(f"hidden size {hidden} is none of the paper's sizes {sorted(heads)}: pass num_heads")
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    pairs = expand_key_templates(_KEYS, depth)
    fused = [tuple(t.format(i=i) for t in _FUSED) for i in range(depth)]
    check_keys(state_dict, [ref for ref, _ in pairs] + [k for gate, up, _ in fused for k in (gate, up)],
               "VisionLLaMA classification checkpoint")
    converted = {ours: state_dict[ref] for ref, ours in pairs}
    for gate, up, ours in fused:
        converted[ours] = torch.cat([state_dict[gate], state_dict[up]], dim=0)
    backbone = dict(image_size=image_size, patch_size=patch, in_channels=channels, hidden_size=hidden, depth=depth,
                    num_heads=num_heads or heads[hidden])
    model = VisionLLaMAClassifier(state_dict["head.weight"].shape[0], backbone)
    load_exact(model, converted)
    return model


def load_reference_classifier(path, image_size=224, num_heads=None):
    """Read an official classification .pth ({"model": state dict, "args": ..., ...} or a bare
    state dict; torch.load with weights_only=True) and convert it."""
    return from_reference_classifier(load_reference_checkpoint(path, weights="model"), image_size, num_heads)
