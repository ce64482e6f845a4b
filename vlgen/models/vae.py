"""The diffusers AutoencoderKL that latent models are trained and decoded with."""


def load_vae(name_or_path, subfolder=None, device="cpu"):
    """A diffusers AutoencoderKL from a hub id or a local directory."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder).to(device).eval()


def latent_scaling(vae):
    """(scale, shift) of the VAE's config; shift is 0 for VAEs without one (SD's)."""
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(scale), float(shift)
