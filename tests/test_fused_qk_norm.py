"""The fused q/k L2-norm + temperature op against plain PyTorch: float64 golden values and gradients (q, k, θ)
on fresh random inputs with strided views of a fused qkv tensor, low-precision rounding, opcheck, compile."""
import math

import pytest
import torch
import torch._dynamo.testing

from conftest import HAS_CUDA
from hmar_kernels.fused import qk_norm, qk_norm_reference
from hmar_kernels.fused.qk_norm_op import qk_norm_forward

DEVICE = "cuda" if HAS_CUDA else "cpu"


def qkv_views(B, H, L, D, dtype, seed):
    """q, k, v as the model makes them: (B, H, L, D) views of one (B, L, 3, H, D) projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, L, 3, H, D, generator=g, dtype=torch.float64).to(device=DEVICE, dtype=dtype)
    return qkv.requires_grad_(), qkv.permute(2, 0, 3, 1, 4).unbind(0)


def thetas(H, seed, dtype=torch.float64):
    """Log temperatures around ln 4, one of them above the clamp at ln 100 (its gradient must be 0)."""
    g = torch.Generator().manual_seed(seed)
    theta = math.log(4.0) + torch.randn(H, generator=g, dtype=torch.float64)
    theta[0] = math.log(100.0) + 0.5
    return theta.to(device=DEVICE, dtype=dtype).requires_grad_()


@pytest.mark.parametrize("B, H, L, D", [(1, 1, 1, 16), (2, 3, 30, 64), (3, 2, 45, 32)])
def test_matches_float64_reference_with_gradients(B, H, L, D):
    qkv, (q, k, _) = qkv_views(B, H, L, D, torch.float64, seed=L)
    theta = thetas(H, seed=D)
    q_out, k_out = qk_norm(q, k, theta)
    want_q, want_k = qk_norm_reference(q, k, theta)
    torch.testing.assert_close(q_out, want_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k_out, want_k, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(B)
    dq, dk = (torch.randn(q.shape, generator=g, dtype=torch.float64).to(DEVICE) for _ in range(2))
    got = torch.autograd.grad((q_out, k_out), (qkv, theta), (dq, dk))
    want = torch.autograd.grad((want_q, want_k), (qkv, theta), (dq, dk))
    for name, a, b in zip(("dqkv", "dtheta"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    assert got[1][0] == 0, "θ above ln 100 is clamped: no gradient"
    assert torch.all(got[0][:, :, 2] == 0), "v gets no gradient from the norm"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_rounds_once(dtype):
    """Kernel error ≤ 2 × the error of the plain formulation in the same dtype (baseline) + 2 × the output dtype's
    rounding, both against the float64 result of the same inputs (golden)."""
    _, (q, k, _) = qkv_views(2, 2, 20, 64, dtype, seed=11)
    theta = thetas(2, seed=12, dtype=torch.float32)
    q_out, k_out = qk_norm(q, k, theta)
    assert q_out.dtype == k_out.dtype == dtype and q_out.is_contiguous()
    golden = qk_norm_reference(q.double(), k.double(), theta.double())
    baseline = qk_norm_reference(q, k, theta)
    eps = torch.finfo(dtype).eps
    for got, base, want in zip((q_out, k_out), baseline, golden):
        err, base_err = ((x.double() - want).abs().max() for x in (got, base))
        bound = 2 * base_err + 2 * eps * want.abs().max()
        assert err <= bound, f"max error {err:.3g} > bound {bound:.3g} (baseline {base_err:.3g})"


def test_opcheck():
    _, (q, k, _) = qkv_views(2, 2, 9, 32, torch.float32, seed=3)
    theta = thetas(2, seed=4, dtype=torch.float32)
    torch.library.opcheck(qk_norm_forward, (q.detach().requires_grad_(), k.detach().requires_grad_(), theta))


def test_compiles_in_one_graph():
    _, (q, k, _) = qkv_views(2, 2, 9, 32, torch.float32, seed=5)
    theta = thetas(2, seed=6, dtype=torch.float32)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda a, b, t: [x.sum() for x in qk_norm(a, b, t)], backend=counter, fullgraph=True)
    got = torch.autograd.grad(sum(compiled(q, k, theta)), theta)
    want = torch.autograd.grad(sum(x.sum() for x in qk_norm_reference(q, k, theta)), theta)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # fp32 sums in another order (accuracy: above)
    assert counter.frame_count == 1


def test_bad_inputs():
    _, (q, k, _) = qkv_views(1, 2, 5, 16, torch.float32, seed=1)
    with pytest.raises(ValueError, match="theta must be"):
        qk_norm(q, k, torch.zeros(3, device=DEVICE))
    with pytest.raises(TypeError, match="one floating dtype"):
        qk_norm(q, k.double(), torch.zeros(2, device=DEVICE))
    with pytest.raises(ValueError, match="q and k must both be"):
        qk_norm(q[0], k[0], torch.zeros(2, device=DEVICE))


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU path without the Triton interpreter")
def test_without_kernel_warns_once_and_computes_the_same(monkeypatch):
    from hmar_kernels.fused import qk_norm_op as module

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    module._warn_once.cache_clear()
    _, (q, k, _) = qkv_views(1, 2, 5, 16, torch.float64, seed=2)
    theta = thetas(2, seed=3)
    with pytest.warns(UserWarning, match="needs CUDA.*unfused PyTorch formulation"):
        got = qk_norm(q, k, theta)
    for a, b in zip(got, qk_norm_reference(q, k, theta)):
        assert torch.equal(a, b)
