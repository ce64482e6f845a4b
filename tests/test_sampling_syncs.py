"""Samplers do not wait for the device inside their steps: no per-step reads of tensor values
(NaN checks are read once, at the end), and per-sample generators' noise reaches the device in one
copy per draw, with the same numbers as before."""
import pytest
import torch
from conftest import tiny_model
from sync_counter import MODEL_CPU_CHECK, TENSOR_READS

from vlgen.diffusion import create_diffusion
from vlgen.sampling import classifier_free_guidance, sample_ddim, sample_ddpm, sample_ode, sample_sde
from vlgen.sampling.noise import randn
from vlgen.transport import Transport


@pytest.fixture
def reads(monkeypatch):
    """(what, caller) of every read of a tensor's values on the host."""
    import sys

    seen = []
    for name in TENSOR_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, sys._getframe(1).f_code.co_name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


STEPS = 8


def generators(n):
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


SAMPLERS = {
    "ddpm": ("DiT-LLaMA-S/2", lambda d, z, y: sample_ddpm(d, create_diffusion("8"), z, generator=generators(2),
                                                          progress=False, y=y)),
    "ddim": ("DiT-LLaMA-S/2", lambda d, z, y: sample_ddim(d, create_diffusion("ddim8"), z, eta=1.0,
                                                          generator=generators(2), progress=False, y=y)),
    "ode-euler": ("SiT-LLaMA-S/2", lambda d, z, y: sample_ode(d, Transport(), z, method="euler", num_steps=8,
                                                              progress=False, y=y)),
    "sde": ("SiT-LLaMA-S/2", lambda d, z, y: sample_sde(d, Transport(), z, num_steps=8, generator=generators(2),
                                                        progress=False, y=y)),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_fixed_step_samplers_read_values_once_at_the_end(name, reads):
    model_name, sample = SAMPLERS[name]
    model = tiny_model(model_name)
    denoise = classifier_free_guidance(model, 2.0, model.null_class_id, 4)
    out = sample(denoise, torch.randn(2, 4, 16, 16), torch.tensor([1, 2]))
    sampler_reads = [read for read in reads if read[1] != MODEL_CPU_CHECK]  # the label check: CPU tensors only
    if name.startswith("ode"):
        # torchdiffeq compares each step's end with the requested end time (one read per step) and
        # checks the time grid before and interpolates the end state after the steps
        assert sampler_reads.count(("__bool__", "integrate")) <= STEPS + 2 and len(sampler_reads) <= STEPS + 8
    else:
        assert sampler_reads == [("__bool__", "report")]  # the NaN check, once, after the last step
    assert ("__bool__", "report") in sampler_reads and torch.isfinite(out).all()


def test_per_sample_generators_draw_the_same_rows_and_copy_once(monkeypatch):
    shape = (5, 3, 4, 4)
    expected = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generators(5)])
    assert torch.equal(randn(shape, generators(5)), expected)  # the numbers of one draw per row
    copies = []
    original = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: copies.append(a) or original(self, *a, **k))
    moved = randn(shape, generators(5), device="meta")
    assert moved.device.type == "meta" and len(copies) == 1  # one copy for the batch, not one per sample


def test_an_npz_is_decoded_by_a_float32_vae_and_tf32_is_one_flag(tmp_path, monkeypatch):
    """`vlgen sample --dtype bfloat16 --out X.npz` runs the transformer in bf16 and the VAE in
    float32 (FID input); TF32 is on unless --no-tf32."""
    from conftest import tiny_vae
    from diffusers import AutoencoderKL
    from test_pipelines import tiny_pipeline

    from vlgen.commands.cli import main

    tiny_pipeline("flow", tiny_vae(tmp_path / "vae")).save_pretrained(tmp_path / "pipe")
    decoded = []
    original = AutoencoderKL.decode
    monkeypatch.setattr(AutoencoderKL, "decode", lambda self, z, *a, **k: decoded.append((self.dtype, z.dtype)) or
                        original(self, z, *a, **k))
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        for flags, precision in (([], "tf32"), (["--no-tf32"], "ieee")):
            out = tmp_path / f"s{len(flags)}.npz"
            assert main(["sample", "--pipeline", str(tmp_path / "pipe"), "--out", str(out), "--num-samples", "2",
                         "--dtype", "bfloat16", "--num-inference-steps", "2", *flags]) == 0
            assert matmul.fp32_precision == precision
    finally:
        matmul.fp32_precision = saved
    assert decoded and set(decoded) == {(torch.float32, torch.float32)}
