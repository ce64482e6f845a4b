"""mixed_precision auto: bf16 only where the machine runs it faster, measured once and cached."""
import json
from types import SimpleNamespace

import pytest

from vlgen.core import precision
from vlgen.core.precision import choose, cpu_precision_probe, resolve_mixed_precision


def test_the_faster_precision_is_chosen_with_a_margin():
    assert choose(fp32_gflops=200, bf16_gflops=900) == "bf16"  # AMX / AVX512-BF16 class
    assert choose(fp32_gflops=160, bf16_gflops=0.3) == "no"  # AVX2 only: emulated bf16
    assert choose(fp32_gflops=300, bf16_gflops=330) == "no"  # within the margin: float32 is safer


def test_an_explicit_setting_wins_and_auto_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("VLGEN_CACHE_DIR", str(tmp_path))
    for setting in ("no", "bf16", "fp16"):
        assert resolve_mixed_precision(setting, "cpu") == (setting, f"mixed precision: {setting} (as set)")
    monkeypatch.setattr(precision, "_probe_rate", lambda dtype, **_: 900.0 if dtype.is_floating_point and
                        dtype.itemsize == 2 else 200.0)
    choice, why = resolve_mixed_precision("auto", "cpu")
    assert choice == "bf16" and "900 GFLOP/s in bf16, 200 in float32" in why


def test_the_probe_is_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("VLGEN_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "_probe_rate", lambda dtype, **_: calls.append(dtype) or 100.0)
    first = cpu_precision_probe()
    assert first == {"fp32_gflops": 100.0, "bf16_gflops": 100.0, "choice": "no"} and len(calls) == 2
    assert cpu_precision_probe() == first and len(calls) == 2  # read back, not measured again
    cached = list(tmp_path.glob("precision-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == first


def test_the_real_probe_is_quick_and_consistent(monkeypatch, tmp_path):
    monkeypatch.setenv("VLGEN_CACHE_DIR", str(tmp_path))
    import time

    start = time.perf_counter()
    result = cpu_precision_probe(use_cache=False)
    assert time.perf_counter() - start < 3.0
    assert result["fp32_gflops"] > 0 and result["bf16_gflops"] > 0
    assert result["choice"] == choose(result["fp32_gflops"], result["bf16_gflops"])


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "no"), ((6, 0), "no")])
def test_cuda_auto_takes_bf16_only_where_the_gpu_has_it_in_hardware(monkeypatch, capability, expected):
    """torch emulates bf16 on GPUs before Ampere (is_bf16_supported says yes there), slowly."""
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision.torch.cuda, "get_device_capability", lambda *device: capability)
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_mixed_precision("auto", "cuda")[0] == expected


@pytest.mark.parametrize("launcher, setting, expected, said", [
    ("bf16", "launcher", "bf16", "mixed precision: bf16 (from the launcher)"),
    (None, "launcher", "no", "mixed precision: no (from the launcher, which set none)"),
    ("bf16", "no", "no", "mixed precision: no (as set; the config's setting wins over the launcher's bf16"),
    ("fp16", "fp16", "fp16", "mixed precision: fp16 (as set)"),
])
def test_the_launchers_setting_is_taken_on_request_and_an_overridden_one_is_named(monkeypatch, launcher, setting,
                                                                                    expected, said):
    monkeypatch.delenv(precision.LAUNCHER_ENV, raising=False)
    if launcher is not None:
        monkeypatch.setenv(precision.LAUNCHER_ENV, launcher)  # what accelerate launch --mixed_precision sets
    choice, why = resolve_mixed_precision(setting, "cpu")
    assert choice == expected and why.startswith(said)
    assert ("wins over" in why) == (launcher is not None and launcher != expected and setting != "launcher")


def test_tf32_is_one_setting_and_evaluation_runs_ieee_inside_it():
    matmul, conv = precision.torch.backends.cuda.matmul, precision.torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        precision.set_tf32(True)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        with precision.ieee_fp32():
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        precision.set_tf32(False)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_training_with_auto_prints_the_choice(monkeypatch, tmp_path, capsys):
    from accelerate.state import AcceleratorState
    from test_training_loop import tiny_config

    from vlgen.training import train

    monkeypatch.setenv("VLGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "_probe_rate", lambda dtype, **_: 0.3 if dtype.itemsize == 2 else 150.0)
    try:
        run = train(tiny_config(tmp_path / "run", "train.max_steps=1", 'train.mixed_precision="auto"'))
        assert run.accelerator.mixed_precision == "no"
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert records and all(record["mixed_precision"] == "no" for record in records)  # what each step ran in
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert "mixed precision: no (auto: this CPU runs matmul and attention at 0.3 GFLOP/s in bf16, 150 in float32)" in capsys.readouterr().err


@pytest.mark.parametrize("bf16_rate, expected", [(900.0, "bfloat16"), (0.3, "float32")])
def test_sampling_dtype_auto_follows_the_probe_and_an_explicit_dtype_wins(monkeypatch, tmp_path, capsys, bf16_rate,
                                                                          expected):
    import torch

    from vlgen.commands.sample import _decided_dtype

    monkeypatch.setenv("VLGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(precision, "_probe_rate", lambda dtype, **_: bf16_rate if dtype.itemsize == 2 else 200.0)
    accelerator = SimpleNamespace(device=torch.device("cpu"), print=print)
    assert _decided_dtype("auto", accelerator) == expected
    assert f"dtype: {expected} (auto: this CPU runs matmul and attention at {bf16_rate:g} GFLOP/s" in capsys.readouterr().out
    for explicit in ("float32", "bfloat16", "float16"):
        assert _decided_dtype(explicit, accelerator) == explicit
