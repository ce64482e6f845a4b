"""Attention: bf16 attention that is back-propagated on a CPU runs in float32."""
import torch
from torch.nn import functional as F

from vlgen.models.attention import attend


def test_attend_back_propagates_bf16_attention_on_cpu_in_float32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8).bfloat16() for _ in range(3))
    with torch.no_grad():  # sampling: torch's bf16 kernel
        assert torch.equal(attend(q, k, v), F.scaled_dot_product_attention(q, k, v))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training: float32 inside, bf16 out
        out = attend(*leaves)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16())
    out.float().square().sum().backward()
    reference = [t.float().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*reference).square().sum().backward()
    for leaf, ref in zip(leaves, reference):
        assert leaf.grad.dtype == torch.bfloat16
        torch.testing.assert_close(leaf.grad.float(), ref.grad, rtol=0.05, atol=0.05)
    fp32 = [t.float() for t in (q, k, v)]
    assert torch.equal(attend(*fp32), F.scaled_dot_product_attention(*fp32))
