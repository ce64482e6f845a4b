"""The GPU check's --smoke mode: every check of benchmarks/gpu_check.py runs on the CPU with a tiny
model and writes its report (CI runs this; the GPU run uses the same code)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_in_smoke_mode(tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["errors"] == {}
    checks = {check["name"]: check for check in report["checks"]}
    assert all(check["passed"] is not False for check in checks.values())
    assert checks["flash SDPA kernel"]["passed"] and checks["bf16 vs float32 (relative norm)"]["passed"]
    for key in ("training_eager_images_per_s", "training_compiled_images_per_s", "sampling_model_images_per_s",
                "inception_images_per_s", "largest_eager_batch", "extraction_images_per_s", "loader_images_per_s", "tf32_over_ieee", "ema_update_ms"):
        assert report[key] is not None and report[key] > 0, key
