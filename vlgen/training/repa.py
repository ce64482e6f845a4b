"""Representation alignment (REPA; Yu et al. 2025): the tokens after one early block of the
denoiser, through a small MLP projector, are pulled towards a frozen encoder's patch features of
the clean image by a negative cosine similarity, added to the denoising loss with a coefficient.

REPA's defaults: block 8 of 28, coefficient 0.5, a projector of width 2048 (Linear, SiLU, Linear,
SiLU, Linear). The encoder runs on the clean image of each sample (pixel data), or its features
come with the latents (`vlgen extract-latents --encoder`). An encoder grid other than the
denoiser's token grid is resized to it (bilinear). The projector is trained with the model and
checkpointed with it, and left out of exports.
"""
from torch import nn
from torch.nn import functional as F

from vlgen.tasks.encoders import encode_patches, load_encoder


class RepaProjector(nn.Module):
    def __init__(self, hidden_size, projector_dim, encoder_dim):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(hidden_size, projector_dim), nn.SiLU(),
                                    nn.Linear(projector_dim, projector_dim), nn.SiLU(),
                                    nn.Linear(projector_dim, encoder_dim))

    def forward(self, tokens):
        return self.layers(tokens)


def alignment_loss(projected, features):
    """Per-sample REPA loss: minus the cosine similarity of projected tokens (N, T, D) and the
    encoder's feature map (N, D, h, w) at the tokens' grid, averaged over the tokens."""
    n, tokens, _ = projected.shape
    grid = int(round(tokens ** 0.5))
    if features.shape[-2:] != (grid, grid):
        features = F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)
    target = features.flatten(2).transpose(1, 2)  # (N, T, D)
    return -(F.normalize(projected.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1).mean(-1)


class TokenCapture:
    """Keeps the output of one block of the denoiser at each forward (a forward hook)."""

    def __init__(self, block):
        self.tokens = None
        self.handle = block.register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        self.tokens = output


class Repa:
    """What a run adds for REPA: the encoder (None when the data carries its features), the
    projector, the capture of the block's tokens and the coefficient."""

    def __init__(self, settings, model, dataset, device):
        depth = len(model.blocks)
        if not 1 <= settings.block <= depth:
            raise ValueError(f"repa.block {settings.block} is not a block of this {depth}-block model: choose 1 to {depth}")
        stored = getattr(dataset, "encoder", None)
        if dataset.posterior:
            if stored is None:
                raise ValueError("repa on latents needs the encoder's features beside them: extract them with "
                                 f"`vlgen extract-latents DATA --encoder {settings.encoder} ...`")
            if stored["spec"] != settings.encoder:
                raise ValueError(f"the latents carry features of the encoder {stored['spec']!r}, repa.encoder is "
                                 f"{settings.encoder!r}: use the same one")
            self.encoder, encoder_dim = None, stored["dim"]
        else:
            self.encoder = load_encoder(settings.encoder, device)
            encoder_dim = self.encoder.dim
        self.projector = RepaProjector(model.config.hidden_size, settings.projector_dim, encoder_dim)
        self.capture = TokenCapture(model.blocks[settings.block - 1])
        self.coefficient = settings.coefficient

    def features(self, stored, clean):
        """The encoder's feature map of a micro-batch: the stored one (latents), or of its clean images."""
        return stored if self.encoder is None else encode_patches(self.encoder, clean)

    def loss(self, projector, features):
        """coefficient x the per-sample alignment loss of the tokens the last forward kept (and
        released: they hold the step's graph)."""
        tokens, self.capture.tokens = self.capture.tokens, None
        return self.coefficient * alignment_loss(projector(tokens), features.to(tokens.device, non_blocking=True))

