"""The diffusers pipelines: loading and saving, labels, guidance, dtypes, resolutions, outputs."""
import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_vae
from PIL import Image

from vlgen.pipelines import DiTLLaMAPipeline, SiTLLaMAPipeline, create_pipeline, labelled_grid, load_pipeline
from vlgen.pipelines.base import label_index
from vlgen.sampling import classifier_free_guidance, sample_ddim, sample_ddpm, sample_ode, sample_sde
from vlgen.diffusion import create_diffusion
from vlgen.transport import Transport

NAMES = ["circle", "square, box", "triangle", "crane", "crane", "star", "plus", "ring", "cross", "bar"]
DDPM = {"kind": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000, "prediction": None}
FLOW = {"kind": "flow", "path": "Linear", "prediction": None, "sample_eps": None}
KINDS = {"ddpm": ("DiT-LLaMA-S/2", DDPM, {"sampler": "ddpm"}), "flow": ("SiT-LLaMA-S/2", FLOW, {"sampler": "ode", "method": "heun"})}


def tiny_pipeline(kind, vae=None, **model_overrides):
    name, objective, defaults = KINDS[kind]
    model = tiny_model(name, in_channels=4 if vae is not None else 3, sample_size=8 if vae is not None else 16,
                       **model_overrides)
    pipe = create_pipeline(model, objective, NAMES, vae, num_inference_steps=4, **defaults)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_from_pretrained_give_the_same_images(kind, tmp_path):
    pipe = tiny_pipeline(kind)
    pipe.save_pretrained(tmp_path / "pipe")
    cls = DiTLLaMAPipeline if kind == "ddpm" else SiTLLaMAPipeline
    for loaded in (cls.from_pretrained(tmp_path / "pipe"), load_pipeline(tmp_path / "pipe")):
        assert type(loaded) is cls and loaded.vae is None
        assert loaded.config.id2label == dict(enumerate(NAMES))
        settings = [{k: v for k, v in p.scheduler.config.items() if not k.startswith("_")} for p in (loaded, pipe)]
        assert settings[0] == settings[1]
        loaded.set_progress_bar_config(disable=True)
        expected = pipe([0, 5, 9], generator=seeded(), output_type="np").images
        assert np.array_equal(loaded([0, 5, 9], generator=seeded(), output_type="np").images, expected)


def test_pipeline_with_a_vae_decodes_latents_and_round_trips(tmp_path):

    vae = tiny_vae(tmp_path / "vae")
    pipe = tiny_pipeline("flow", vae)
    latents = pipe([1, 2], generator=seeded(), output_type="latent").images
    assert latents.shape == (2, 4, 8, 8) and pipe.vae_scale_factor == 2
    with torch.no_grad():
        decoded = vae.decode(latents / 0.5 + 0.1).sample  # x / scaling_factor + shift_factor
    images = pipe([1, 2], generator=seeded(), output_type="pt").images
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(tmp_path / "pipe")
    assert loaded.vae.config.scaling_factor == 0.5
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded([1, 2], generator=seeded(), output_type="pt").images, images)


def test_guidance_scale_one_is_the_conditional_model():
    pipe = tiny_pipeline("ddpm")
    noise = torch.randn(3, 3, 16, 16, generator=seeded(1))
    labels = torch.tensor([2, 0, 7])
    diffusion = create_diffusion("4")
    direct = sample_ddpm(pipe.transformer, diffusion, noise, generator=seeded(), progress=False, y=labels)
    out = pipe([2, 0, 7], guidance_scale=1.0, latents=noise, generator=seeded(), output_type="latent").images
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-6)
    guided = pipe([2, 0, 7], guidance_scale=3.0, latents=noise, generator=seeded(), output_type="latent").images
    assert (guided - direct).abs().max() > 1e-3


def test_guided_flow_sampling_equals_the_sampler_with_cfg():
    pipe = tiny_pipeline("flow")
    noise = torch.randn(2, 3, 16, 16, generator=seeded(1))
    labels = torch.tensor([4, 6])
    denoise = classifier_free_guidance(pipe.transformer, 2.5, pipe.transformer.null_class_id, 3)
    direct = sample_ode(denoise, Transport(), noise, method="heun", num_steps=4, progress=False, y=labels)
    out = pipe([4, 6], guidance_scale=2.5, latents=noise, output_type="latent").images
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_label_names_and_ids_give_the_same_images(kind):
    pipe = tiny_pipeline(kind)
    by_id = pipe([0, 1, 1, 3], generator=seeded(), output_type="np").images
    by_name = pipe(["circle", "square", "square, box", 3], generator=seeded(), output_type="np").images
    assert np.array_equal(by_id, by_name)
    assert pipe.get_label_ids("box") == [1] and pipe.get_label_ids(torch.tensor([2, 5])) == [2, 5]


def test_label_index_splits_synonyms_and_marks_shared_names():
    index = label_index({0: "tench, Tinca tinca", 1: "crane", 2: "crane, derrick"})
    assert index["tench"] == 0 and index["Tinca tinca"] == 0 and index["tench, Tinca tinca"] == 0
    assert index["crane"] is None and index["derrick"] == 2


@pytest.mark.parametrize("labels, message", [
    (["cirle"], "unknown label name 'cirle'; did you mean 'circle'"),
    (["crane"], r"names several classes \[3, 4\]: pass the class id"),
    ([10], r"out of range: ids are integers in \[0, 9\]"),
    ([-1], "out of range"),
    ([True], "out of range"),
    ([1.5], "out of range"),
    ([], "class_labels is empty"),
])
def test_bad_labels_are_clear_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline("ddpm")(labels)


def test_bad_call_arguments_are_clear_errors():
    pipe = tiny_pipeline("flow")
    with pytest.raises(TypeError, match="unexpected argument.* atoll"):
        pipe([0], atoll=1e-3)
    with pytest.raises(TypeError, match=r"method, sampler belong to the sampler.*use_sampler\(NAME"):
        pipe([0], sampler="ode", method="euler")
    with pytest.raises(ValueError, match="unknown option.* atoll for sampler 'ode'"):
        pipe.use_sampler("ode", atoll=1e-3)
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        pipe.use_sampler("ddim")
    with pytest.raises(ValueError, match="is adaptive"):
        pipe.use_sampler("ode", method="dopri5")([0], num_inference_steps=10)
    pipe = tiny_pipeline("flow")
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe([0], height=15)
    with pytest.raises(ValueError, match="latents have shape"):
        pipe([0, 1], latents=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="latents contain NaN or inf"):
        pipe([0], latents=torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="unknown output_type"):
        pipe([0], output_type="jpeg")
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        pipe([0], guidance_scale=-1.0)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        pipe([0], guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="needs a null class"):
        tiny_pipeline("flow", class_dropout_prob=0.0)([0], guidance_scale=2.0)
    with pytest.raises(ValueError, match="one per sample"):
        pipe([0, 1], generator=[seeded()])
    with pytest.raises(ValueError, match="need num_inference_steps >= 2"):
        tiny_pipeline("ddpm")([0], num_inference_steps=1)
    with pytest.raises(ValueError, match="exceeds the 1000 steps"):
        tiny_pipeline("ddpm")([0], num_inference_steps=1001)


@pytest.mark.parametrize("kind, sampler, options", [
    ("ddpm", "ddim", {"eta": 0.0}), ("ddpm", "ddim", {"eta": 1.0}), ("flow", "sde", {}), ("flow", "ode", {"method": "euler"}),
])
def test_sampler_choice_runs_that_sampler(kind, sampler, options):
    pipe = tiny_pipeline(kind)
    noise = torch.randn(2, 3, 16, 16, generator=seeded(1))
    labels = torch.tensor([1, 8])
    if kind == "ddpm":
        direct = sample_ddim(pipe.transformer, create_diffusion("ddim4"), noise, generator=seeded(), progress=False,
                             y=labels, **options)
    elif sampler == "sde":
        direct = sample_sde(pipe.transformer, Transport(), noise, num_steps=4, generator=seeded(), progress=False,
                            y=labels)
    else:
        direct = sample_ode(pipe.transformer, Transport(), noise, num_steps=4, progress=False, y=labels, **options)
    pipe.use_sampler(sampler, num_inference_steps=4, **options)
    out = pipe([1, 8], guidance_scale=1.0, latents=noise, generator=seeded(), output_type="latent").images
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_one_generator_per_image_makes_images_independent_of_the_batch(kind):
    pipe = tiny_pipeline(kind)
    pair = pipe([3, 7], generator=[seeded(10), seeded(11)], output_type="pt").images
    alone = pipe([7], generator=[seeded(11)], output_type="pt").images
    # Equal up to float rounding (matmuls of another batch size round differently); noise drawn
    # for the batch would differ by O(1).
    torch.testing.assert_close(pair[1:], alone, rtol=0, atol=1e-4)


def test_output_types():
    pipe = tiny_pipeline("ddpm")
    pil = pipe([0, 1], generator=seeded()).images
    array = pipe([0, 1], generator=seeded(), output_type="np").images
    tensor = pipe([0, 1], generator=seeded(), output_type="pt").images
    assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].size == (16, 16)
    assert array.shape == (2, 16, 16, 3) and array.min() >= 0 and array.max() <= 1
    assert tensor.shape == (2, 3, 16, 16)
    torch.testing.assert_close(torch.from_numpy(array).permute(0, 3, 1, 2), tensor)
    assert np.array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype(np.uint8))
    (images,) = pipe([0], generator=seeded(), return_dict=False)
    assert len(images) == 1
    with pytest.raises(ValueError, match="4 channels, which are not an image"):
        create_pipeline(tiny_model("DiT-LLaMA-S/2"), DDPM, NAMES)([0])


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")  # newer diffusers: dtype=
def test_torch_dtype_runs_the_transformer_in_that_dtype(tmp_path):
    pipe = tiny_pipeline("flow")
    pipe.save_pretrained(tmp_path / "pipe")
    half = SiTLLaMAPipeline.from_pretrained(tmp_path / "pipe", torch_dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    assert half.transformer.dtype == torch.bfloat16
    seen = []
    half.transformer.blocks[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    low = half([0, 4], generator=seeded(), output_type="pt").images
    full = pipe([0, 4], generator=seeded(), output_type="pt").images
    assert set(seen) == {torch.bfloat16} and low.dtype == torch.float32
    assert (low - full).abs().max() < 0.1  # bfloat16 keeps 8 bits of mantissa
    assert pipe.to(torch.bfloat16).transformer.dtype == torch.bfloat16  # .to(dtype) as diffusers


def test_other_resolution_uses_auto_scaled_rope():
    pipe = tiny_pipeline("flow")
    plain = tiny_pipeline("flow", rope_auto_scale=False)
    big = pipe([2], height=24, width=32, generator=seeded(), output_type="pt").images
    assert big.shape == (1, 3, 24, 32)
    # The same weights with unscaled positions give other images at 24x32, and the same at 16x16.
    assert (plain([2], height=24, width=32, generator=seeded(), output_type="pt").images - big).abs().max() > 1e-3
    assert torch.equal(plain([2], generator=seeded(), output_type="pt").images,
                       pipe([2], generator=seeded(), output_type="pt").images)


def test_progress_bar_is_shown_unless_disabled(capsys):
    pipe = tiny_pipeline("ddpm")
    pipe.set_progress_bar_config(disable=False)
    pipe([0], generator=seeded())
    assert "DDPM" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe([0], generator=seeded())
    assert capsys.readouterr().err == ""


def test_labelled_grid_layout():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    grid = labelled_grid([("a", [red, red, red]), ("longer name", [blue])])
    width, height = grid.size
    assert height == 2 * (8 + 2) + 2 and width > 3 * (8 + 2)
    pixels = np.asarray(grid)
    assert (pixels == [255, 0, 0]).all(-1).sum() == 3 * 64 and (pixels == [0, 0, 255]).all(-1).sum() == 64
    with pytest.raises(ValueError, match="share one size"):
        labelled_grid([("a", [red, Image.new("RGB", (4, 4))])])


def test_the_pipeline_undoes_the_channel_normalisation_of_training(tmp_path):
    vae = tiny_vae(tmp_path / "vae")
    norm = {"mean": [0.1, -0.2, 0.3, 0.0], "std": [2.0, 0.5, 1.0, 4.0]}
    model = tiny_model("SiT-LLaMA-S/2", in_channels=4, sample_size=8)
    pipe = create_pipeline(model, {"kind": "flow"}, NAMES, vae, latent_norm=norm, num_inference_steps=2,
                           sampler="ode", method="euler")
    pipe.set_progress_bar_config(disable=True)
    latents = pipe([1, 2], generator=seeded(), output_type="latent").images
    mean, std = (torch.tensor(norm[key])[:, None, None] for key in ("mean", "std"))
    with torch.no_grad():
        decoded = vae.decode((latents * std + mean) / 0.5 + 0.1).sample
    images = pipe([1, 2], generator=seeded(), output_type="pt").images
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))
    pipe.save_pretrained(tmp_path / "pipe")
    assert load_pipeline(tmp_path / "pipe").config.latent_norm == norm
    with pytest.raises(ValueError, match="one value per latent channel"):
        create_pipeline(model, {"kind": "flow"}, NAMES, vae, latent_norm={"mean": [0.0], "std": [1.0]})


def test_a_512_model_generates_512_pixel_images_by_default(tmp_path):
    """A model of 64x64 latents with an 8x VAE (4 blocks, as the SD VAE) samples 512x512 images."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1).eval()
    model = tiny_model("SiT-LLaMA-S/8", in_channels=4, sample_size=64)
    pipe = create_pipeline(model, {"kind": "flow"}, NAMES, vae, num_inference_steps=1, sampler="ode", method="euler")
    pipe.set_progress_bar_config(disable=True)
    assert pipe([3], generator=seeded(), output_type="np").images.shape == (1, 512, 512, 3)
