"""Convergence accelerators: REPA (alignment loss, projector training and checkpointing, encoder
features extracted with latents), LightningDiT's options (RMSNorm, QK-norm, logit-normal DDPM
times, the sampling time shift); each off leaves the model and the run as they were."""
import json
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import Interrupted, interrupt_training_after, tiny_vae, write_image_folder
from safetensors.torch import load_file
from test_training_loop import tiny_config

from vlgen.commands.export import export_checkpoint
from vlgen.data.latents import LatentDataset, extract_latents
from vlgen.diffusion import create_diffusion
from vlgen.models import VisionLLaMADenoiser
from vlgen.models.attention import Attention
from vlgen.models.blocks import token_norm
from vlgen.tasks.encoders import load_encoder
from vlgen.models.registry import model_name
from vlgen.objectives import create_objective
from vlgen.sampling import sample_ode, sample_sde
from vlgen.sampling.flow import time_grid
from vlgen.tasks.classification import create_classifier
from vlgen.training import train
from vlgen.training.checkpoint import latest_checkpoint
from vlgen.training.repa import TokenCapture, alignment_loss
from vlgen.transport import Transport

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def small_classifier(path, image_size=16):
    """An (untrained) vlgen classifier directory: a REPA encoder of width 24 on 4x4 patches."""
    torch.manual_seed(0)
    create_classifier("S", 3, image_size=image_size, patch_size=4, hidden_size=24, depth=1,
                      num_heads=2).save_pretrained(path)
    return str(path)


# --- REPA ---------------------------------------------------------------------------------------

def test_alignment_loss_is_minus_the_mean_cosine_similarity():
    features = torch.randn(2, 5, 4, 4)  # (N, D, h, w)
    tokens = features.flatten(2).transpose(1, 2)  # (N, 16, 5)
    torch.testing.assert_close(alignment_loss(3.0 * tokens, features), torch.full((2,), -1.0))  # scale-free
    torch.testing.assert_close(alignment_loss(-tokens, features), torch.ones(2))
    orthogonal = torch.zeros(1, 16, 2)
    orthogonal[..., 1] = 1.0
    along_first = torch.zeros(1, 2, 4, 4)
    along_first[:, 0] = 1.0
    torch.testing.assert_close(alignment_loss(orthogonal, along_first), torch.zeros(1))
    # one token at 45 degrees, the others aligned: the mean of the cosines
    mixed = along_first.flatten(2).transpose(1, 2).clone()
    mixed[0, 0] = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(alignment_loss(mixed, along_first), torch.tensor([-(15 + math.sqrt(0.5)) / 16]))


def test_an_encoder_grid_other_than_the_token_grid_is_resized_bilinearly():
    constant = torch.randn(1, 6, 1, 1).expand(1, 6, 8, 8)  # a constant map stays constant when resized
    tokens = constant[:, :, :4, :4].flatten(2).transpose(1, 2)  # 16 tokens: a 4x4 grid
    torch.testing.assert_close(alignment_loss(tokens, constant), torch.full((1,), -1.0))


def test_the_alignment_gradient_reaches_the_blocks_up_to_the_aligned_one_only():
    model = VisionLLaMADenoiser(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=3, num_heads=2,
                                num_classes=3, learn_sigma=False)
    capture = TokenCapture(model.blocks[1])
    model(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 1]))
    assert capture.tokens.shape == (2, 16, 32)
    alignment_loss(capture.tokens, torch.randn(2, 32, 4, 4)).sum().backward()
    touched = {name.split(".")[1] for name, p in model.named_parameters()
               if name.startswith("blocks.") and p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"0", "1"}


def test_repa_trains_its_projector_logs_its_loss_and_resumes_bitwise(tmp_path, monkeypatch):
    encoder = small_classifier(tmp_path / "encoder")
    overrides = ["train.max_steps=5", "logging.checkpoint_every=2", f"repa.encoder={encoder}", "repa.block=1",
                 "repa.projector_dim=16"]
    reference = train(tiny_config(tmp_path / "straight", *overrides))
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(-0.5 <= r["repa_loss"] <= 0.5 for r in records)  # coefficient 0.5 x a mean cosine
    assert records[-1]["repa_loss"] < records[0]["repa_loss"]  # the projector and blocks learn to align
    saved = load_file(str(tmp_path / "straight" / "checkpoints" / "step-0000005" / "projector.safetensors"))
    assert set(saved) == {f"layers.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")}
    assert saved["layers.4.weight"].shape == (24, 16)  # to the encoder's width

    with monkeypatch.context() as patch:
        interrupt_training_after(patch, 3)
        with pytest.raises(Interrupted):
            train(tiny_config(tmp_path / "killed", *overrides))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert latest_checkpoint(tmp_path / "killed").name == "step-0000002"
    resumed = train(tiny_config(tmp_path / "killed", *overrides), resume="latest")
    for module in ("model", "projector"):
        for name, value in getattr(reference, module).state_dict().items():
            assert torch.equal(getattr(resumed, module).state_dict()[name], value), (module, name)
    resumed_records = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["loss"], r["repa_loss"]) for r in resumed_records] == [(r["loss"], r["repa_loss"]) for r in records]

    with pytest.warns(UserWarning, match="EMA weights still hold"):  # a 5-step run
        pipeline = export_checkpoint(latest_checkpoint(tmp_path / "straight"), tmp_path / "pipeline")
    exported = load_file(str(pipeline / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert not any("projector" in key or key.startswith("layers.") for key in exported)  # training-only part


def test_repa_off_trains_exactly_as_before(tmp_path):
    """With repa.encoder unset nothing changes: no projector, the same loss as a run without the key."""
    plain = train(tiny_config(tmp_path / "plain", "train.max_steps=2"))
    assert plain.repa is None and plain.projector is None
    assert not (tmp_path / "plain" / "checkpoints" / "step-0000002" / "projector.safetensors").exists()
    record = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "repa_loss" not in record


def test_repa_settings_errors(tmp_path):
    encoder = small_classifier(tmp_path / "encoder")
    with pytest.raises(ValueError, match="repa.block 3 is not a block of this 2-block model"):
        train(tiny_config(tmp_path / "a", "train.max_steps=1", f"repa.encoder={encoder}", "repa.block=3"))
    with pytest.raises(ValueError, match="neither a vlgen classifier directory"):
        train(tiny_config(tmp_path / "b", "train.max_steps=1", f"repa.encoder={tmp_path / 'nothing'}", "repa.block=1"))
    with pytest.raises(ValueError, match="repa.coefficient must be positive"):
        train(tiny_config(tmp_path / "c", "train.max_steps=1", f"repa.encoder={encoder}", "repa.coefficient=0"))


def test_latents_carry_the_encoders_features_for_repa(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    tiny_vae(tmp_path / "vae")
    encoder_dir = small_classifier(tmp_path / "encoder")
    meta = extract_latents(Accelerator(cpu=True), root, str(tmp_path / "vae"), tmp_path / "latents", resolution=16,
                           batch_size=2, progress=False, encoder=load_encoder(encoder_dir))
    assert meta["encoder"] == {"spec": encoder_dir, "dim": 24}
    dataset = LatentDataset(tmp_path / "latents")
    encoder = load_encoder(encoder_dir)  # the same weights, loaded again
    from vlgen.data.images import ImageDataset

    images = ImageDataset(root, 16)
    for flip in (False, True):
        image = images[(1, False)]["x"][None]
        with torch.no_grad():
            expected = encoder(torch.flip(image, dims=[-1]) if flip else image)[0]
        torch.testing.assert_close(dataset[(1, flip)]["z"], expected, atol=1e-5, rtol=1e-5)

    latent_run = ["data.kind=latents", f"data.path={tmp_path / 'latents'}", "train.global_batch_size=2",
                  "model.name=SiT-LLaMA-S/2", "repa.block=1", "repa.projector_dim=8", "train.max_steps=2"]
    run = train(tiny_config(tmp_path / "run", *latent_run, f"repa.encoder={encoder_dir}"))
    assert run.repa.encoder is None  # the features came with the latents
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match="the latents carry features of the encoder"):
        train(tiny_config(tmp_path / "other", *latent_run, "repa.encoder=dinov2_vitb14"))
    extract_latents(Accelerator(cpu=True), root, str(tmp_path / "vae"), tmp_path / "bare", resolution=16,
                    batch_size=2, progress=False)
    with pytest.raises(ValueError, match="extract-latents DATA --encoder"):
        train(tiny_config(tmp_path / "bare-run", *latent_run, f"data.path={tmp_path / 'bare'}",
                          f"repa.encoder={encoder_dir}"))


# --- LightningDiT's model options ---------------------------------------------------------------

def test_rmsnorm_is_the_root_mean_square_normalisation_without_affine_parameters():
    x = torch.randn(3, 5, 16)
    norm = token_norm("rmsnorm", 16, 1e-6)
    assert not list(norm.parameters())
    torch.testing.assert_close(norm(x), x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6))
    with pytest.raises(ValueError, match="norm must be one of"):
        token_norm("batchnorm", 16, 1e-6)


def test_qk_norm_makes_attention_invariant_to_the_scale_of_queries_and_keys():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    outputs = {}
    for qk_norm in (False, True):
        attention = Attention(16, 2, qk_norm=qk_norm)
        plain = attention(x)
        with torch.no_grad():
            attention.qkv.weight[:32] *= 7.0  # the query and key projections
            attention.qkv.bias[:32] *= 7.0
        outputs[qk_norm] = (plain, attention(x))
    torch.testing.assert_close(outputs[True][0], outputs[True][1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(outputs[False][0], outputs[False][1], atol=1e-3)


def test_the_options_change_only_what_they_name():
    base = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=3)
    plain, lightning = VisionLLaMADenoiser(**base), VisionLLaMADenoiser(**base, norm="rmsnorm", qk_norm=True)
    extra = set(lightning.state_dict()) - set(plain.state_dict())
    assert extra == {f"blocks.{i}.attn.{which}_norm.weight" for i in range(2) for which in "qk"}
    assert all(torch.equal(lightning.state_dict()[k], torch.ones(16)) for k in extra)  # RMSNorm scales start at 1
    assert set(plain.state_dict()) <= set(lightning.state_dict())
    named = VisionLLaMADenoiser(sample_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6,
                                num_classes=1000, learn_sigma=True, block_type="llama")
    assert model_name(named.config) == "DiT-LLaMA-S/2"
    assert model_name({**named.config, "qk_norm": True}) is None  # no reference checkpoint has it
    assert model_name({**named.config, "norm": "rmsnorm"}) is None


# --- training and sampling times ----------------------------------------------------------------

def test_logit_normal_ddpm_timesteps_follow_their_distribution():
    diffusion = create_diffusion(time_sampling="logit-normal", logit_mean=0.0, logit_std=1.0)
    t = diffusion.sample_times(200_000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    # P(t < T sigmoid(-1)) = P(z < -1) = Phi(-1) for z ~ N(0, 1)
    below = (t < 1000 * torch.sigmoid(torch.tensor(-1.0))).float().mean().item()
    assert abs(below - 0.5 * math.erfc(1 / math.sqrt(2))) < 0.005
    assert abs(t.float().median().item() - 499.5) < 5
    objective = create_objective({"kind": "ddpm", "time_sampling": "logit-normal", "logit_std": 0.5}, True)
    assert (objective.time_sampling, objective.logit_std) == ("logit-normal", 0.5)
    uniform = create_diffusion().sample_times(8, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="logit_std must be positive"):
        create_diffusion(time_sampling="logit-normal", logit_std=0.0)


def test_the_time_shift_grid_is_sd3s_shift_of_the_noise_level():
    plain = time_grid(0.0, 1.0, 11, 1.0, torch.float64, "cpu")
    torch.testing.assert_close(plain, torch.linspace(0, 1, 11, dtype=torch.float64))
    shift = 3.0
    shifted = time_grid(0.0, 1.0, 11, shift, torch.float64, "cpu")
    sigma = 1 - plain
    torch.testing.assert_close(1 - shifted, shift * sigma / (1 + (shift - 1) * sigma))
    assert (shifted[1:] - shifted[:-1] > 0).all() and (shifted <= plain).all()  # small steps near the noise
    # LightningDiT's timestep_shift s on the time t is this shift with 1 / s
    s = 1 / shift
    torch.testing.assert_close(shifted, s * plain / (1 + (s - 1) * plain))
    ends = time_grid(0.1, 0.9, 5, 2.0, torch.float64, "cpu")
    assert ends[0].item() == pytest.approx(0.1) and ends[-1].item() == pytest.approx(0.9)


def test_shifted_samplers_step_on_the_shifted_grid_and_stay_exact():
    """Point-mass data c on the linear path: v(x, t) = (c - x) / (1 - t). An Euler step keeps the
    error's ratio (1 - t_next) / (1 - t) exactly, on any grid: both samplers land where they must,
    and the model sees the grid's times."""
    transport = Transport(path="Linear", prediction="velocity")
    c, noise = torch.full((1, 1, 2, 2), 0.7), torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    seen = []

    def denoise(x, t, y=None):
        seen.append(float(t[0]))
        return (c - x) / (1 - t).view(-1, 1, 1, 1)

    t0, t1 = transport.interval()
    out = sample_ode(denoise, transport, noise, method="euler", num_steps=4, time_shift=3.0, progress=False)
    torch.testing.assert_close(out, c - (c - noise) * (1 - t1) / (1 - t0))
    grid = time_grid(t0, t1, 5, 3.0, torch.float32, "cpu")
    assert seen == pytest.approx(grid[:-1].tolist())
    with pytest.raises(ValueError, match="the adaptive dopri5 places its own"):
        sample_ode(denoise, transport, noise, method="dopri5", time_shift=3.0, progress=False)
    with pytest.raises(ValueError, match="time shift must be positive"):
        sample_sde(denoise, transport, noise, num_steps=4, time_shift=0.0, progress=False)


HUBCONF = '''
import torch


class _Patches(torch.nn.Module):
    embed_dim, patch_size = 6, 14

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 6, 14, 14)

    def forward_features(self, x):
        self.seen = x
        return {"x_norm_patchtokens": self.proj(x).flatten(2).transpose(1, 2)}


def dinov2_vits14():
    return _Patches()
'''


def test_dinov2_loads_from_a_local_copy_of_its_hub_repository_with_repas_preprocessing(tmp_path):
    (tmp_path / "dinov2").mkdir()
    (tmp_path / "dinov2" / "hubconf.py").write_text(HUBCONF)
    encoder = load_encoder(str(tmp_path / "dinov2" / "dinov2_vits14"))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    features = encoder(images)
    assert encoder.dim == 6 and features.shape == (2, 6, 16, 16)  # 224 px: 16 x 16 patches of 14 px
    seen = encoder.network.seen
    assert seen.shape == (2, 3, 224, 224)
    # (x + 1) / 2 in [0, 1], then ImageNet's mean and standard deviation (bicubic resizing commutes with them)
    expected = torch.nn.functional.interpolate((images + 1) / 2, size=(224, 224), mode="bicubic", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(seen, (expected - mean) / std)
    assert encoder(torch.zeros(1, 3, 512, 512)).shape == (1, 6, 32, 32)  # 448 px for 512 px images, as REPA


def test_an_unavailable_dinov2_is_an_error_naming_the_offline_ways(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(FileNotFoundError, match=r"hub cache|\$TORCH_HOME/hub.*local copy"):
        load_encoder("dinov2_vitb14")
