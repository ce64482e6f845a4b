"""VisionLLaMADenoiser: the DiT-style class-conditional diffusion transformer.

block_type="llama": VisionLLaMA blocks (2D RoPE / AS2DRoPE attention, SwiGLU), no absolute
position embedding. block_type="dit": the plain DiT baseline (fixed 2D sin-cos position
embedding, GELU MLP). Both use adaLN-Zero conditioning on timestep + class label. mlp_type gives
a block type the other's MLP, for ablations that separate the two changes (no reference
checkpoint has such a model). norm="rmsnorm" and qk_norm=True are LightningDiT's recipe options
(RMSNorm for the tokens' normalisation, RMSNorm on queries and keys); off, the model is the
reference one.
"""
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from vlgen.core.guidance import classifier_free_guidance
from vlgen.models.blocks import FinalLayer, transformer_block
from vlgen.models.embeddings import LabelEmbedder, TimestepEmbedder, sincos_pos_embed_2d
from vlgen.models.rope import RotaryEmbedding2D

BLOCK_TYPES = ("llama", "dit")
OWN_MLP = {"llama": "swiglu", "dit": "gelu"}  # each block type's own MLP (mlp_type=None)


def _one_of(name, value, alias, alias_value):
    """The argument given under either of its two names (vlgen's or diffusers')."""
    if value is not None and alias_value is not None:
        raise TypeError(f"give {name} or {alias}, not both")
    if value is None and alias_value is None:
        raise TypeError(f"missing the argument {name} (or {alias})")
    return alias_value if value is None else value


class VisionLLaMADenoiser(ModelMixin, ConfigMixin):
    """The class-conditional diffusion transformer: `forward(x, t, y)` returns the prediction.

    In `forward`, x is (N, in_channels, H, W) latents or images with H and W multiples of
    patch_size; t is (N,) or a scalar of timesteps (integer DDPM steps or continuous flow times);
    y is (N,) integer labels in [0, num_classes], where num_classes is the null class (needs
    class_dropout_prob > 0). The output is (N, out_channels, H, W). It also takes the call of
    diffusers' DiTTransformer2DModel, `forward(hidden_states, timestep, class_labels,
    return_dict=True)` returning `Transformer2DModelOutput(sample=...)`, with the same numbers, so
    diffusers' DiTPipeline samples with it.

    Args:
        sample_size: the trained latent (or image) side; other sides use AS2DRoPE.
        patch_size: the side of a patch (2, 4 or 8 in the named sizes).
        in_channels: channels of x (4 for SD-VAE latents).
        hidden_size: token width.
        depth: number of blocks.
        num_heads: attention heads per block.
        block_type: "llama" (VisionLLaMA blocks: 2D RoPE, SwiGLU, no absolute position embedding)
            or "dit" (the plain DiT block with sin-cos position embedding and a GELU MLP).
        mlp_ratio: MLP hidden width over hidden_size (SwiGLU keeps LLaMA's 2/3 of it).
        num_classes: class labels; the id num_classes is the null class of guidance.
        class_dropout_prob: probability of replacing a training label by the null class.
        learn_sigma: add the learned-variance channels after the prediction (DiT's learned sigma).
        discard_sigma: keep the learned-sigma width of the final layer but return only the
            prediction channels (SiT's networks).
        rope_theta: RoPE base frequency.
        rope_auto_scale: AS2DRoPE: scale the RoPE positions at sides other than sample_size.
        norm_eps: epsilon of the attention branch's normalisation.
        mlp_norm_eps: epsilon of the MLP branch's normalisation (default norm_eps).
        frequency_embedding_size: sinusoidal width of the timestep embedding.
        timestep_freq_shift: 0 spaces the timestep frequencies as DiT does, 1 as diffusers' DiT
            (for checkpoints converted from diffusers).
        mlp_type: "swiglu" or "gelu" to swap a block type's own MLP (ablations).
        out_channels: diffusers' name for the output width; must agree with the other settings.
        norm: "layernorm" or "rmsnorm" for the tokens' normalisation.
        qk_norm: RMSNorm on each head's queries and keys.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        block_type: str = "llama",
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = True,
        discard_sigma: bool = False,
        rope_theta: float = 10000.0,
        rope_auto_scale: bool = True,
        norm_eps: float = 1e-6,
        mlp_norm_eps: float | None = None,
        frequency_embedding_size: int = 256,
        timestep_freq_shift: int = 0,
        mlp_type: str | None = None,
        out_channels: int | None = None,
        norm: str = "layernorm",
        qk_norm: bool = False,
    ):
        super().__init__()
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
        if discard_sigma and not learn_sigma:
            raise ValueError("discard_sigma=True only makes sense with learn_sigma=True")
        produced = 2 * in_channels if learn_sigma and not discard_sigma else in_channels
        if out_channels not in (None, produced):
            raise ValueError(f"out_channels={out_channels} does not match the model: in_channels={in_channels}, "
                             f"learn_sigma={learn_sigma}, discard_sigma={discard_sigma} give {produced}; leave it out")
        self.register_to_config(out_channels=produced)  # derived; recorded for code written for diffusers' DiT
        mlp_norm_eps = norm_eps if mlp_norm_eps is None else mlp_norm_eps
        self.base_grid = (sample_size // patch_size, sample_size // patch_size)

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size, timestep_freq_shift)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.rope = (RotaryEmbedding2D(hidden_size // num_heads, self.base_grid, rope_theta, rope_auto_scale)
                     if block_type == "llama" else None)
        mlp_type = mlp_type or OWN_MLP[block_type]
        self.blocks = nn.ModuleList(transformer_block(hidden_size, num_heads, mlp_type, mlp_ratio, norm_eps, mlp_norm_eps,
                                                      norm, qk_norm) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, 2 * in_channels if learn_sigma else in_channels, norm_eps,
                                      norm)
        self._pos_embed_cache = {}
        self.gradient_checkpointing = False
        self.initialize_weights()

    @property
    def out_channels(self):
        return self.config.out_channels

    @property
    def outputs_variance(self):
        """Whether the output carries learned-variance channels after the prediction (DiT's learned sigma)."""
        return self.config.learn_sigma and not self.config.discard_sigma

    @property
    def null_class_id(self):
        """Label of the unconditional (null) class, or None when the model has none."""
        return self.config.num_classes if self.config.class_dropout_prob > 0 else None

    def initialize_weights(self):
        """The reference initialisation: Xavier-uniform Linears with zero bias, patch embedding
        like a Linear, N(0, 0.02) label table and timestep MLP, zero adaLN and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.fc1.weight, std=0.02)
        nn.init.normal_(self.t_embedder.fc2.weight, std=0.02)
        for layer in [block.adaln for block in self.blocks] + [self.final_layer.adaln, self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_inputs(self, x, y):
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected input of shape (N, {cfg.in_channels}, H, W), got {tuple(x.shape)}; "
                f"this model was built with in_channels={cfg.in_channels}"
            )
        if x.shape[-2] % cfg.patch_size or x.shape[-1] % cfg.patch_size:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not divisible by patch_size {cfg.patch_size}; "
                f"crop or pad to a multiple of {cfg.patch_size}"
            )
        if y.shape != (x.shape[0],) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        # Checking the range needs the values on the host: only done on plain CPU tensors (no device
        # sync; fake tensors of memory estimates have none), and not in a compiled graph, which
        # reading values would break in two.
        if type(y) is torch.Tensor and y.device.type == "cpu" and y.numel() and not torch.compiler.is_compiling():
            highest = cfg.num_classes if self.null_class_id is not None else cfg.num_classes - 1
            low, high = int(y.min()), int(y.max())
            if low < 0 or high > highest:
                raise ValueError(
                    f"label out of range [0, {highest}]: got values in [{low}, {high}] "
                    f"(num_classes={cfg.num_classes}; the null class id is {self.null_class_id})"
                )

    def _pos_embed(self, grid_h, grid_w, device):
        key = (grid_h, grid_w, device)
        if key not in self._pos_embed_cache:
            table = sincos_pos_embed_2d(self.config.hidden_size, grid_h, grid_w)
            self._pos_embed_cache[key] = table.to(device)
        return self._pos_embed_cache[key]

    def unpatchify(self, tokens, grid_h, grid_w):
        """(N, T, p*p*C) -> (N, C, grid_h*p, grid_w*p)."""
        p = self.config.patch_size
        n, channels = tokens.shape[0], tokens.shape[-1] // (p * p)
        x = tokens.reshape(n, grid_h, grid_w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, channels, grid_h * p, grid_w * p)

    def forward(self, x=None, t=None, y=None, drop_labels=None, *, hidden_states=None, timestep=None,
                class_labels=None, return_dict=None):
        """drop_labels: None drops labels at class_dropout_prob in training mode (as DiT); a (N,)
        bool mask replaces exactly those labels by the null class, so a trainer can draw the
        dropout itself (reproducible across process counts). hidden_states, timestep,
        class_labels: diffusers' names for x, t, y. return_dict: return
        Transformer2DModelOutput(sample=...) instead of the tensor; by default True when called
        with diffusers' timestep / class_labels names, as DiTTransformer2DModel does."""
        if return_dict is None:
            return_dict = timestep is not None or class_labels is not None
        x = _one_of("x", x, "hidden_states", hidden_states)
        t = _one_of("t", t, "timestep", timestep)
        y = _one_of("y", y, "class_labels", class_labels)
        self._check_inputs(x, y)
        n, _, height, width = x.shape
        grid_h, grid_w = height // self.config.patch_size, width // self.config.patch_size
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(n) if t.ndim == 0 else t

        # The residual stream is float32 under autocast too (as in DiT / SiT): only the patch
        # embedding's matmul runs in the autocast dtype. A model cast to bf16 stays bf16.
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2).to(self.patch_embed.weight.dtype)  # (N, T, D)
        rope = None
        if self.rope is None:
            tokens = tokens + self._pos_embed(grid_h, grid_w, x.device).to(tokens.dtype)
        else:
            rope = self.rope(grid_h, grid_w, x.device)  # (T, head_dim) cos and sin
        drop = self.training if drop_labels is None else drop_labels
        c = self.t_embedder(t) + self.y_embedder(y, drop_labels=drop)  # (N, D)
        c_act = F.silu(c)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = self._gradient_checkpointing_func(block, tokens, c_act, rope)
            else:
                tokens = block(tokens, c_act, rope)  # (N, T, D)
        out = self.unpatchify(self.final_layer(tokens, c_act), grid_h, grid_w)  # (N, C_out, H, W)
        if self.config.discard_sigma:
            out = out[:, : self.config.in_channels]
        return Transformer2DModelOutput(sample=out) if return_dict else out

    def forward_with_cfg(self, x, t, y, guidance_scale, guided_channels=None):
        """Classifier-free guidance in one batched call: the conditional and unconditional halves
        run as one batch of 2N; returns (N, out_channels, H, W).

        guided_channels: how many leading output channels are guided; default all prediction
        channels (in_channels), never the learned-variance channels, which come from the
        conditional half. DiT's own code guides only the first 3: pass guided_channels=3 to
        reproduce its numbers.
        """
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        in_channels = self.config.in_channels
        guided = in_channels if guided_channels is None else guided_channels
        denoise = classifier_free_guidance(self, guidance_scale, self.null_class_id, guided,
                                           prediction_channels=in_channels)
        return denoise(x, t, y)
