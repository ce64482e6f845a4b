"""`mixed_precision: auto`: bf16 autocast only where this machine runs it faster than float32.

CPUs differ by orders of magnitude: with AMX or AVX512-BF16 a bf16 matmul runs several times the
float32 rate, while a CPU with AVX2 alone can run it hundreds of times slower. A short probe (a
256 x 256 matmul in each precision, well under a second) measures both rates; its result is cached
per machine and torch version. On CUDA the usual rule holds: bf16 where the device supports it.
"""
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from vlgen.core.atomic import atomic_path

MARGIN = 1.2  # bf16 must be this much faster than float32 to be chosen
PROBE_SIZE = 256
CACHE_ENV = "VLGEN_CACHE_DIR"


def _matmul_rate(dtype, size=PROBE_SIZE, budget_s=0.3):
    """GFLOP/s of size x size matmuls in dtype, best of a few, stopping once the budget is spent."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    best, spent = float("inf"), 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return 2 * size**3 / best / 1e9


def _cache_file():
    identity = f"{platform.machine()}|{platform.processor()}|{_cpu_model()}|{os.cpu_count()}|{torch.__version__}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "vlgen"))
    return root / f"precision-{key}.json"


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_precision_probe(use_cache=True, wait_s=0.0):
    """{"fp32_gflops", "bf16_gflops", "choice"} of this CPU ("bf16" or "no"), cached. wait_s: how
    long to wait for another process of the same launch to write the cache before measuring."""
    cache = _cache_file()
    deadline = time.monotonic() + wait_s
    while use_cache and not cache.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    if use_cache and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # measured again below
    with torch.inference_mode():
        fp32, bf16 = _matmul_rate(torch.float32), _matmul_rate(torch.bfloat16)
    result = {"fp32_gflops": round(fp32, 2), "bf16_gflops": round(bf16, 2), "choice": choose(fp32, bf16)}
    if use_cache:
        try:
            with atomic_path(cache) as temporary:
                temporary.write_text(json.dumps(result))
        except OSError:
            pass  # a read-only home: measure next time again
    return result


def choose(fp32_gflops, bf16_gflops):
    """"bf16" where bf16 matmuls run MARGIN times the float32 rate, else "no" (float32)."""
    return "bf16" if bf16_gflops >= MARGIN * fp32_gflops else "no"


def resolve_mixed_precision(setting, device_type, wait_s=0.0):
    """(accelerate's mixed_precision, a line saying why) for "auto", "no", "bf16" or "fp16"; wait_s
    as for cpu_precision_probe."""
    if setting != "auto":
        return setting, f"mixed precision: {setting} (as set)"
    if device_type == "cuda":
        choice = "bf16" if torch.cuda.is_bf16_supported() else "no"
        return choice, f"mixed precision: {choice} (auto: CUDA {'with' if choice == 'bf16' else 'without'} bf16)"
    probe = cpu_precision_probe(wait_s=wait_s)
    return probe["choice"], (f"mixed precision: {probe['choice']} (auto: this CPU multiplies {probe['bf16_gflops']:g} "
                             f"GFLOP/s in bf16, {probe['fp32_gflops']:g} in float32)")
