"""What the DDPM and flow pipelines share: components, class labels, noise, guidance, decoding and
output formats. A subclass only says how to sample (its `sample` method)."""
import difflib
import numbers

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor

from pipelines.options import check_sampler_options
from sampling.noise import randn
from vlgen.core.choices import check_choice
from vlgen.core.guidance import classifier_free_guidance
from vlgen.models.vae import latent_scaling

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def label_names(value):
    """The names a class answers to: its id2label value and each comma-separated part of it
    ("tench, Tinca tinca": that, "tench" and "Tinca tinca")."""
    return {value, *(part.strip() for part in value.split(","))} - {""}


def label_index(id2label):
    """name -> class id for every name of id2label; a name shared by several classes maps to None."""
    index = {}
    for class_id, value in id2label.items():
        for name in label_names(value):
            index[name] = class_id if index.get(name, class_id) == class_id else None
    return index


class ClassConditionalPipeline(DiffusionPipeline):
    """Components: transformer (a VisionLLaMADenoiser), scheduler (the sampler settings), vae (an
    AutoencoderKL, or None for a pixel-space model); config: id2label."""

    _optional_components = ["vae"]
    model_cpu_offload_seq = "transformer->vae"
    SAMPLER_OPTIONS = {}  # sampler name -> the option names it takes; set by each subclass

    def __init__(self, transformer, scheduler, vae=None, id2label=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        id2label = {int(key): str(value) for key, value in (id2label or {}).items()}  # JSON keys are strings
        self.register_to_config(id2label=id2label)  # saved in model_index.json next to the components
        self.labels = label_index(id2label)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def get_label_ids(self, class_labels):
        """Class ids (a list of ints) from ids, label names (any name of id2label), or a mix."""
        if isinstance(class_labels, (str, numbers.Integral)) or torch.is_tensor(class_labels) and class_labels.ndim == 0:
            class_labels = [class_labels]
        num_classes = self.transformer.config.num_classes
        ids = []
        for label in (class_labels.tolist() if torch.is_tensor(class_labels) else class_labels):
            if isinstance(label, str):
                ids.append(self._label_id(label))
            elif isinstance(label, numbers.Integral) and not isinstance(label, bool) and 0 <= label < num_classes:
                ids.append(int(label))
            else:
                raise ValueError(f"class label {label!r} is out of range: ids are integers in [0, {num_classes - 1}] "
                                 "(or pass label names)")
        if not ids:
            raise ValueError("class_labels is empty: pass at least one class id or label name")
        return ids

    def _label_id(self, name):
        if name not in self.labels:
            close = difflib.get_close_matches(name, self.labels, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            known = "" if len(self.labels) > 20 else f" Known: {', '.join(sorted(self.labels))}"
            raise ValueError(f"unknown label name {name!r}{hint}{known}")
        if self.labels[name] is None:
            owners = sorted(i for i, value in self.config.id2label.items() if name in label_names(value))
            raise ValueError(f"label name {name!r} names several classes {owners}: pass the class id")
        return self.labels[name]

    def _latent_shape(self, batch_size, height, width):
        cfg, factor = self.transformer.config, self.vae_scale_factor
        height = cfg.sample_size * factor if height is None else height
        width = cfg.sample_size * factor if width is None else width
        multiple = factor * cfg.patch_size
        if height % multiple or width % multiple or height < multiple or width < multiple:
            raise ValueError(f"height and width must be positive multiples of {multiple} (VAE factor {factor} x "
                             f"patch size {cfg.patch_size}), got {height}x{width}")
        return batch_size, cfg.in_channels, height // factor, width // factor

    def _denoiser(self, guidance_scale, guided_channels, guidance_interval):
        """denoise(x, t, y) in float32 for the samplers; the transformer runs in its own dtype
        (torch_dtype), so the sampler's update arithmetic stays in float32."""
        transformer, dtype = self.transformer, self.transformer.dtype

        def denoise(x, t, y):
            return transformer(x.to(dtype), t, y).float()

        in_channels = transformer.config.in_channels
        guided = in_channels if guided_channels is None else guided_channels
        return classifier_free_guidance(denoise, guidance_scale, transformer.null_class_id, guided, guidance_interval,
                                        prediction_channels=in_channels)

    def _decode(self, x):
        """Model samples -> images in [-1, 1]: the VAE decodes latents (x / scale + shift)."""
        if self.vae is None:
            return x
        scale, shift = latent_scaling(self.vae)
        return self.vae.decode((x / scale + shift).to(self.vae.dtype)).sample.float()

    def sample(self, denoise, noise, labels, generator, sampler, num_inference_steps, progress, options):
        """The model's samples from noise; each subclass runs its own samplers. sampler and its
        options are checked; num_inference_steps is None for the settings' default."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, class_labels, guidance_scale=4.0, num_inference_steps=None, generator=None, height=None,
                 width=None, latents=None, output_type="pil", return_dict=True, guided_channels=None,
                 guidance_interval=None, **sampler_options):
        """Sample one image per class label.

        class_labels: ids or label names (one, or a list). guidance_scale: classifier-free guidance
        (1 = the conditional model, no guidance). num_inference_steps: default from the scheduler
        settings. generator: a torch.Generator, or a list of one per image (each image then depends
        on its own generator only). height, width: in pixels; default the trained size, other
        sizes use the auto-scaled 2D RoPE (AS2DRoPE). latents: starting noise instead of drawing it.
        output_type: "pil", "np" (NHWC in [0, 1]), "pt" (NCHW in [0, 1]) or "latent" (the raw
        samples, not decoded). guided_channels: how many leading channels to guide (default all
        prediction channels; DiT's code guides 3). guidance_interval: (t_low, t_high) where CFG
        applies. sampler_options: the sampler and its options (see the subclass).
        """
        check_choice("output_type", output_type, OUTPUT_TYPES)
        channels = self.transformer.config.in_channels
        if self.vae is None and output_type != "latent" and channels not in (1, 3):
            raise ValueError(f"this pixel-space model has {channels} channels, which are not an image: use "
                             "output_type='latent' (or add the VAE that decodes them)")
        labels = self.get_label_ids(class_labels)
        device = self._execution_device
        shape = self._latent_shape(len(labels), height, width)
        if latents is None:
            noise = randn(shape, generator, device)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape} for {len(labels)} labels "
                             f"at this height and width")
        elif not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or inf: pass finite starting noise")
        else:
            noise = latents.to(device, torch.float32)
        denoise = self._denoiser(guidance_scale, guided_channels, guidance_interval)
        progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        labels = torch.tensor(labels, device=device)
        sampler = sampler_options.pop("sampler", None) or self.scheduler.config.sampler
        check_sampler_options(sampler, sampler_options, self.SAMPLER_OPTIONS)
        x = self.sample(denoise, noise, labels, generator, sampler, num_inference_steps, progress, sampler_options)
        images = x if output_type == "latent" else self._decode(x)
        if output_type != "latent":
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
