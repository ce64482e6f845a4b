import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from vlgen.commands.allocator import keep_freed_memory
from vlgen.models import create_model
if sys.argv[1] == "keep":
    assert keep_freed_memory()
model = create_model("DiT-LLaMA-S/2", depth=2).eval()
x, t, y = torch.randn(8, 4, 32, 32), torch.full((8,), 500), torch.zeros(8, dtype=torch.long)
with torch.inference_mode():
    model(x, t, y)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x, t, y)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_denoiser_steps_reuse_freed_memory_instead_of_faulting_in_pages():
    def page_faults(mode):
        result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(result.stdout.split()[-1])

    default, kept = page_faults("default"), page_faults("keep")
    assert kept < default / 2, (default, kept)
