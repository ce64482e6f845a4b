"""The precision policy, in one place: which autocast a run uses and how float32 matmuls run.

`mixed_precision: auto` picks bf16 autocast only where this machine runs it faster than float32.
CPUs differ by orders of magnitude: with AMX or AVX512-BF16 a bf16 matmul runs several times the
float32 rate, while a CPU with AVX2 alone can run it hundreds of times slower. A short probe (a
256 x 256 matmul and a 4-head attention over 256 tokens in each precision, well under a second)
measures both rates; its result is cached per machine and torch version. On CUDA: bf16 where the
GPU has it in hardware (Ampere and later; torch emulates it on older GPUs, slowly).
`mixed_precision: launcher` takes what `accelerate launch` / `accelerate config` set.

Master weights stay float32 under every setting. Float32 matmuls and convolutions on CUDA use
TF32 in training, sampling and latent extraction (`set_tf32`, `train.tf32`), and IEEE float32 in
evaluation (`ieee_fp32`: TF32 would move FID). Both go through torch's fp32_precision settings
(torch refuses a mix of those and the legacy allow_tf32 flags in one process).
"""
import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlgen.core.atomic import atomic_path

MARGIN = 1.2  # bf16 must be this much faster than float32 to be chosen
PROBE_SIZE = 256  # matmul size and attention tokens: the scale of a small denoiser's layers
PROBE_HEADS, PROBE_HEAD_DIM = 4, 64
CACHE_ENV = "VLGEN_CACHE_DIR"
PROBE_VERSION = 2  # part of the cache key: a changed probe measures again
OTHER_PROCESS_WAIT_S = 60.0  # how long the other processes of a launch wait for the first one's probe


def _probe_rate(dtype, budget_s=0.3):
    """GFLOP/s of one matmul plus one attention call in dtype (the two kinds of work of a
    transformer step), best of a few, stopping once the budget is spent."""
    a, b = (torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype) for _ in range(2))
    q, k, v = (torch.randn(1, PROBE_HEADS, PROBE_SIZE, PROBE_HEAD_DIM).to(dtype) for _ in range(3))
    flop = 2 * PROBE_SIZE**3 + 4 * PROBE_HEADS * PROBE_SIZE**2 * PROBE_HEAD_DIM
    best, spent = float("inf"), 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        F.scaled_dot_product_attention(q, k, v)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return flop / best / 1e9


def _cache_file():
    identity = f"probe {PROBE_VERSION}|{platform.machine()}|{platform.processor()}|{cpu_model()}|{os.cpu_count()}|{torch.__version__}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "vlgen"))
    return root / f"precision-{key}.json"


def _cpuinfo_field(name):
    """The first value of a /proc/cpuinfo field ("" where there is none or the file is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model():
    """The CPU's model name."""
    return _cpuinfo_field("model name")


def cpu_flags():
    """The CPU's ISA flags, as a set (avx2, avx512_bf16, amx_bf16, ...)."""
    return set(_cpuinfo_field("flags").split())


def cpu_precision_probe(use_cache=True):
    """{"fp32_gflops", "bf16_gflops", "choice"} of this CPU ("bf16" or "no"), cached. The first
    process of a machine measures; the others of a launch (LOCAL_RANK > 0) wait for its cache, so
    that every process decides alike."""
    cache = _cache_file()
    first_here = os.environ.get("LOCAL_RANK", "0") == "0"
    deadline = time.monotonic() + (0.0 if first_here else OTHER_PROCESS_WAIT_S)
    while use_cache and not cache.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    if use_cache and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # measured again below
    with torch.inference_mode():
        fp32, bf16 = _probe_rate(torch.float32), _probe_rate(torch.bfloat16)
    result = {"fp32_gflops": round(fp32, 2), "bf16_gflops": round(bf16, 2), "choice": choose(fp32, bf16)}
    if use_cache:
        try:
            with atomic_path(cache) as temporary:
                temporary.write_text(json.dumps(result))
        except OSError:
            pass  # a read-only home: measure next time again
    return result


def choose(fp32_gflops, bf16_gflops):
    """"bf16" where the probe runs MARGIN times the float32 rate in bf16, else "no" (float32)."""
    return "bf16" if bf16_gflops >= MARGIN * fp32_gflops else "no"


def cuda_has_bf16():
    """Whether the current GPU computes bf16 in hardware (compute capability 8.0 and later), not by
    emulation."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def auto_precision(device_type):
    """("bf16" or "no", why in words) of the setting "auto" on a device type."""
    if device_type == "cuda":
        choice = "bf16" if cuda_has_bf16() else "no"
        return choice, f"auto: a GPU {'with' if choice == 'bf16' else 'without'} bf16 in hardware"
    probe = cpu_precision_probe()
    return probe["choice"], (f"auto: this CPU runs matmul and attention at {probe['bf16_gflops']:g} GFLOP/s in bf16, "
                             f"{probe['fp32_gflops']:g} in float32")


LAUNCHER_ENV = "ACCELERATE_MIXED_PRECISION"  # what accelerate launch passes on from its flag or config


def resolve_mixed_precision(setting, device_type):
    """(accelerate's mixed_precision, a line saying why and what it overrode) for "auto", "no",
    "bf16", "fp16" or "launcher" (the launcher's setting, "no" when it gave none)."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if setting == "launcher":
        choice = launcher or "no"
        return choice, f"mixed precision: {choice} (from the launcher{'' if launcher else ', which set none'})"
    if setting == "auto":
        choice, why = auto_precision(device_type)
    else:
        choice, why = setting, "as set"
    if launcher is not None and launcher != choice:
        why += f"; the config's setting wins over the launcher's {launcher} (train.mixed_precision: launcher to take it)"
    return choice, f"mixed precision: {choice} ({why})"


def _fp32_settings():
    """torch's fp32_precision settings of CUDA matmuls and cuDNN convolutions."""
    return torch.backends.cuda.matmul, torch.backends.cudnn.conv


def set_tf32(enabled):
    """Float32 matmuls and convolutions on CUDA in TF32 (Ampere and later: several times the IEEE
    rate, a 10-bit mantissa for the products) or IEEE float32; no effect on CPU work."""
    for backend in _fp32_settings():
        backend.fp32_precision = "tf32" if enabled else "ieee"


@contextlib.contextmanager
def ieee_fp32():
    """IEEE float32 matmuls and convolutions inside the block (evaluation: TF32 would move FID)."""
    saved = [backend.fp32_precision for backend in _fp32_settings()]
    set_tf32(False)
    try:
        yield
    finally:
        for backend, value in zip(_fp32_settings(), saved):
            backend.fp32_precision = value
