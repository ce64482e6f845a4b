"""What the DDPM and flow pipelines share: components, class labels, noise, guidance, the sampler
(the scheduler component), decoding and output formats. A subclass says how its model's output
meets a diffusers scheduler (`scheduler_output`) and how vlgen's own sampler runs (`sample`)."""
import difflib
import numbers
import tempfile
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from huggingface_hub import create_repo

from vlgen.pipelines.hub import check_card_info, model_card, pipeline_class_name, write_loader
from vlgen.pipelines.samplers import DDPMSampler, FlowSampler
from vlgen.pipelines.schedulers import (DEFAULT_STEPS, check_fits, make_scheduler, run_scheduler, step_scheduler,
                                  with_options)
from vlgen.sampling.noise import randn
from vlgen.core.choices import check_choice
from vlgen.core.guidance import classifier_free_guidance
from vlgen.models.vae import latent_scaling

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
HUB_OPTIONS = ("repo_id", "token", "private", "commit_message", "create_pr")  # save_pretrained(push_to_hub=True)
SAMPLER_OPTIONS = ("sampler", "method", "eta", "clip_denoised", "atol", "rtol", "diffusion_form", "diffusion_norm",
                   "last_step", "last_step_size")  # call options of earlier versions, now the scheduler's


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
    """Components: transformer (a VisionLLaMADenoiser), scheduler (the sampler: vlgen's own or a
    diffusers scheduler that fits the model, see vlgen.pipelines.schedulers), vae (an AutoencoderKL, or
    None for a pixel-space model); config: id2label, and process, the training process of the
    model (kind "ddpm": noise_schedule, diffusion_steps, prediction; kind "flow": path,
    prediction, sample_eps); card, what the model card says beyond the model itself (name,
    training, scores, license, datasets, base_model: vlgen.pipelines.hub.check_card_info);
    latent_norm, the per-channel mean and std the latents were normalised by in training ({"mean",
    "std"} lists, or None: the VAE's scaling only), which decoding undoes.

    save_pretrained writes diffusers' files plus the loader file of diffusers' generic loader and
    the model card (README.md); push_to_hub uploads the same."""

    _optional_components = ["vae"]
    model_cpu_offload_seq = "transformer->vae"
    KIND = None  # the process kind the subclass samples: "ddpm" or "flow"

    def __init__(self, transformer, scheduler, vae=None, id2label=None, process=None, card=None, latent_norm=None):
        super().__init__()
        if not isinstance(process, dict) or process.get("kind") != self.KIND:
            raise ValueError(f"{type(self).__name__} needs the model's training process (a dict of kind "
                             f"{self.KIND!r}), got {process!r}; a pipeline directory without one was written by an "
                             "earlier vlgen: export it again from its checkpoint (`vlgen export CHECKPOINT --out DIR`)")
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        id2label = {int(key): str(value) for key, value in (id2label or {}).items()}  # JSON keys are strings
        # saved in model_index.json
        if latent_norm is not None and (set(latent_norm) != {"mean", "std"} or vae is None
                                        or not len(latent_norm["mean"]) == len(latent_norm["std"]) == transformer.config.in_channels):
            raise ValueError(f"latent_norm must be {{'mean': [...], 'std': [...]}} with one value per latent channel "
                             f"({transformer.config.in_channels}) of a latent model, got {latent_norm!r}")
        self.register_to_config(id2label=id2label, process=dict(process), card=check_card_info(card),
                                latent_norm=latent_norm)
        self.labels = label_index(id2label)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' load_config, reading model_index.json's [loader file, class] as the class
        name: this class loads a directory itself, without importing its loader file."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        config["_class_name"] = pipeline_class_name(config)
        return loaded

    def save_config(self, save_directory):
        """diffusers' model_index.json, naming this class through the loader file (vlgen.pipelines.hub)."""
        super().save_config(save_directory)
        write_loader(save_directory, type(self).__name__)

    def save_pretrained(self, save_directory, safe_serialization=True, variant=None, max_shard_size=None,
                        push_to_hub=False, **kwargs):
        """diffusers' save_pretrained plus the model card (README.md). push_to_hub uploads the
        directory (kwargs: repo_id, default the directory's name; token, private, commit_message,
        create_pr) and returns the commit."""
        unknown = sorted(set(kwargs) - set(HUB_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected argument(s) {', '.join(unknown)}")
        repo_id = None
        if push_to_hub:
            repo_id = create_repo(kwargs.get("repo_id", Path(save_directory).name), exist_ok=True,
                                  private=kwargs.get("private"), token=kwargs.get("token")).repo_id
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant,
                                max_shard_size=max_shard_size)
        model_card(self, repo_id).save(Path(save_directory) / "README.md")
        if push_to_hub:
            return self._upload_folder(save_directory, repo_id, token=kwargs.get("token"),
                                       commit_message=kwargs.get("commit_message"),
                                       create_pr=kwargs.get("create_pr", False))
        return None

    def push_to_hub(self, repo_id, commit_message=None, private=None, token=None, create_pr=False,
                    safe_serialization=True, variant=None):
        """Upload the pipeline with its loader file and model card to the Hub repository repo_id."""
        with tempfile.TemporaryDirectory() as directory:
            return self.save_pretrained(directory, safe_serialization=safe_serialization, variant=variant,
                                        push_to_hub=True, repo_id=repo_id, token=token, private=private,
                                        commit_message=commit_message, create_pr=create_pr)

    def use_sampler(self, name=None, **options):
        """Make the scheduler component the sampler `name`, fitted to the model.

        The same as `pipe.scheduler = X.from_config(pipe.scheduler.config, **options)`.

        Args:
            name: a name of vlgen.pipelines.schedulers.SCHEDULERS: "ddpm", "ddim", "dpm-solver++",
                ... for DDPM models; "ode", "sde", "flow-euler", "flow-heun" for flow models. None:
                keep the current scheduler and apply the options.
            **options: arguments of the scheduler's constructor, e.g. `eta=0.5` for DDIM.

        Returns:
            The pipeline itself.
        """
        if name is None:
            self.scheduler = with_options(self.scheduler, **options)
        else:
            self.scheduler = make_scheduler(self.config.process, self.transformer.outputs_variance, name, **options)
        return self

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
        """Model samples -> images in [-1, 1]: the VAE decodes latents (x / scale + shift), after
        the per-channel normalisation of training is undone (latent_norm)."""
        if self.vae is None:
            return x
        norm = self.config.get("latent_norm")
        if norm is not None:
            mean, std = (torch.tensor(norm[key], device=x.device, dtype=x.dtype)[:, None, None] for key in ("mean", "std"))
            x = x * std + mean
        scale, shift = latent_scaling(self.vae)
        return self.vae.decode((x / scale + shift).to(self.vae.dtype)).sample.float()

    def sample(self, denoise, noise, labels, generator, num_inference_steps, progress):
        """The model's samples from noise by vlgen's own sampler (the scheduler component)."""
        raise NotImplementedError

    def scheduler_output(self, denoise, labels, scheduler):
        """model_output(x, t) for a diffusers scheduler's step at its timestep t."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, class_labels, guidance_scale=4.0, num_inference_steps=None, generator=None, height=None,
                 width=None, latents=None, output_type="pil", return_dict=True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), guided_channels=None, guidance_interval=None,
                 **removed):
        """Sample one image per class label with the scheduler component (`use_sampler` swaps it).

        Args:
            class_labels: class ids or label names (one, or a list).
            guidance_scale: classifier-free guidance scale (1: the conditional model, no guidance).
            num_inference_steps: default the scheduler's own (vlgen's samplers) or 20 (diffusers
                schedulers).
            generator: a torch.Generator, or a list of one per image (each image then depends on
                its own generator only).
            height: in pixels; default the trained size, other sizes use AS2DRoPE.
            width: in pixels; default the trained size.
            latents: starting noise instead of drawing it.
            output_type: "pil", "np" (NHWC in [0, 1]), "pt" (NCHW in [0, 1]) or "latent" (the raw
                samples, not decoded).
            return_dict: return an ImagePipelineOutput; False: a tuple (images,).
            callback_on_step_end: `callback(pipe, i, t, {"latents": x}) -> dict`, called after each
                step of a diffusers scheduler; a returned "latents" replaces x.
            callback_on_step_end_tensor_inputs: the tensors the callback receives.
            guided_channels: how many leading channels to guide (default all prediction channels;
                DiT's code guides 3).
            guidance_interval: (t_low, t_high) of model timesteps where guidance applies.
            **removed: sampler options of earlier versions; an error says where they went.

        Returns:
            ImagePipelineOutput: `.images` in the form output_type names.
        """
        if removed:
            moved = sorted(set(removed) & set(SAMPLER_OPTIONS))
            if moved:
                raise TypeError(f"{', '.join(moved)} belong to the sampler, which is the scheduler component: "
                                "pipe.use_sampler(NAME, **options), e.g. pipe.use_sampler('ddim', eta=0.5)")
            raise TypeError(f"unexpected argument(s) {', '.join(sorted(removed))}")
        check_choice("output_type", output_type, OUTPUT_TYPES)
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - {"latents"})
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs can name 'latents' only, got {unknown}")
        channels = self.transformer.config.in_channels
        if self.vae is None and output_type != "latent" and channels not in (1, 3):
            raise ValueError(f"this pixel-space model has {channels} channels, which are not an image: use "
                             "output_type='latent' (or add the VAE that decodes them)")
        check_fits(self.scheduler, self.config.process, self.transformer.outputs_variance)
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
        labels = torch.tensor(labels, device=device)
        if isinstance(self.scheduler, (DDPMSampler, FlowSampler)):
            if callback_on_step_end is not None:
                raise ValueError("callback_on_step_end runs with a diffusers scheduler (step by step); vlgen's own "
                                 "samplers run whole (the ODE inside torchdiffeq): use e.g. "
                                 "pipe.use_sampler('diffusers-ddpm') or 'flow-euler'")
            steps = self.scheduler.config.num_inference_steps if num_inference_steps is None else num_inference_steps
            progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
            x = self.sample(denoise, noise, labels, generator, steps, progress)
        else:
            steps = DEFAULT_STEPS if num_inference_steps is None else num_inference_steps
            scheduler = step_scheduler(self.scheduler)
            callback = None
            if callback_on_step_end is not None:
                def callback(i, t, x):
                    return callback_on_step_end(self, i, t, {"latents": x}).get("latents", x)
            x = run_scheduler(scheduler, self.scheduler_output(denoise, labels, scheduler), noise, steps, generator,
                              self.progress_bar, flow=self.KIND == "flow", callback=callback)
        images = x if output_type == "latent" else self._decode(x)
        if output_type != "latent":
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
