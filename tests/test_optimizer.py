"""The fused AdamW every training loop uses."""
import torch

from vlgen.core.optimizer import create_adamw


def test_adamw_is_fused_on_cpu_and_steps_like_the_unfused_one():
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    fused_params = [torch.nn.Parameter(w.clone()) for w in weights]
    plain_params = [torch.nn.Parameter(w.clone()) for w in weights]
    fused = create_adamw(fused_params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    plain = torch.optim.AdamW(plain_params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, optimizer in ((fused_params, fused), (plain_params, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b, initial in zip(fused_params, plain_params, weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a.detach(), initial)  # the steps moved the weights
    meta = create_adamw([torch.nn.Parameter(torch.empty(3, device="meta"))], lr=1e-3)
    assert not meta.defaults["fused"]  # no fused kernel there: torch's default implementation
