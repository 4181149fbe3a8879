"""Chunked linear + cross-entropy against F.cross_entropy(F.linear(...)): float64 values and every gradient with
per-row weights and chunk sizes that do not divide N, autocast rounding, one compiled graph, argmax hits (ties
included), bad inputs."""
import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F

from hmar_kernels.fused import linear_cross_entropy


def problem(N, C, V, seed, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, C, generator=g, dtype=dtype) / C ** 0.5).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    target = torch.randint(0, V, (N,), generator=g)
    row_weights = torch.rand(N, generator=g, dtype=dtype)  # e.g. HMAR's per-scale loss weights
    return h, weight, b, target, row_weights


def plain(h, weight, b, target):
    return F.cross_entropy(F.linear(h, weight, b).float() if h.dtype != torch.float64 else F.linear(h, weight, b),
                           target, reduction="none")


@pytest.mark.parametrize("N, C, V, chunk_rows, bias", [(37, 16, 50, 8, True), (5, 8, 7, 64, False),
                                                       (64, 32, 128, 64, True), (1, 4, 3, 1, True)])
def test_matches_plain_float64_with_all_gradients(N, C, V, chunk_rows, bias):
    h, weight, b, target, row_weights = problem(N, C, V, seed=N + V, bias=bias)
    params = [t for t in (h, weight, b) if t is not None]
    ce = linear_cross_entropy(h, weight, b, target, chunk_rows=chunk_rows)
    want = plain(h, weight, b, target)
    assert ce.dtype == torch.float64 and ce.shape == (N,)
    torch.testing.assert_close(ce, want, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((ce * row_weights).sum(), params)
    expected = torch.autograd.grad((want * row_weights).sum(), params)
    for name, a, e in zip(("dh", "dW", "db"), got, expected):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=1e-7, atol=1e-9, msg=name)


def test_autocast_rounds_as_the_autocast_head():
    """Under bf16 autocast: the same loss and gradients as an autocast nn.Linear + fp32 cross-entropy, within the
    bf16 rounding of the two (the chunked GEMMs accumulate dW in a different order)."""
    h, weight, b, target, row_weights = problem(40, 32, 96, seed=3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce = linear_cross_entropy(h, weight, b, target, chunk_rows=16)
        want = F.cross_entropy(F.linear(h, weight, b).float(), target, reduction="none")
    torch.testing.assert_close(ce, want, rtol=2e-6, atol=2e-6)  # same bf16 logits; logsumexp vs log_softmax
    got = torch.autograd.grad((ce * row_weights).sum(), (h, weight, b))
    expected = torch.autograd.grad((want * row_weights).sum(), (h, weight, b))
    exact = torch.autograd.grad((plain(*(t.double() for t in (h, weight, b)), target) * row_weights).sum(),
                                (h, weight, b))
    for name, a, e, x in zip(("dh", "dW", "db"), got, expected, exact):
        assert a.dtype == torch.float32
        bound = 2 * (e.double() - x).abs().max() + 1e-6
        assert (a.double() - x).abs().max() <= bound, f"{name}: error above twice the unfused head's"


def test_frozen_weight_and_compile():
    h, weight, b, target, _ = problem(30, 8, 20, seed=5, dtype=torch.float32)
    weight.requires_grad_(False)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda *a: linear_cross_entropy(*a, chunk_rows=7).mean(), backend=counter,
                             fullgraph=True)
    got = torch.autograd.grad(compiled(h, weight, b, target), (h, b))
    want = torch.autograd.grad(plain(h, weight, b, target).mean(), (h, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1


def test_bad_inputs():
    h, weight, b, target, _ = problem(6, 4, 5, seed=1)
    with pytest.raises(ValueError, match="same C"):
        linear_cross_entropy(h, weight[:, :3], b, target)
    with pytest.raises(ValueError, match="bias must be"):
        linear_cross_entropy(h, weight, b[:4], target)
    with pytest.raises(ValueError, match="target must be"):
        linear_cross_entropy(h, weight, b, target[:5])
    with pytest.raises(TypeError, match="int64"):
        linear_cross_entropy(h, weight, b, target.int())
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(h, weight, b, target, chunk_rows=0)
    with pytest.raises(TypeError, match="return_hits"):
        linear_cross_entropy(h, weight, b, target, return_hits=1)


@pytest.mark.parametrize("dtype, autocast", [(torch.float64, False), (torch.float32, False), (torch.float32, True)])
def test_hits_equal_argmax_of_the_plain_logits(dtype, autocast):
    """hit = argmax(logits) == target on the logits the unfused head computes (bf16-rounded under autocast), across
    chunk boundaries; the loss and its gradients are those of the call without hits; hits carry no gradient."""
    h, weight, b, target, row_weights = problem(45, 16, 40, seed=torch.randint(0, 2**31, ()).item(), dtype=dtype)
    target[::3] = F.linear(h, weight, b).argmax(-1)[::3]  # a third of the rows are hits, the rest mostly misses
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ce, hit = linear_cross_entropy(h, weight, b, target, chunk_rows=8, return_hits=True)
        want_ce = linear_cross_entropy(h, weight, b, target, chunk_rows=8)
        logits = F.linear(h, weight, b).float() if autocast else F.linear(h, weight, b)
    assert hit.dtype == torch.bool and hit.shape == (45,) and not hit.requires_grad
    assert torch.equal(hit, logits.argmax(-1) == target)
    assert 0 < int(hit.sum()) < 45
    assert torch.equal(ce, want_ce)
    got = torch.autograd.grad((ce * row_weights).sum(), (h, weight, b))
    expected = torch.autograd.grad((want_ce * row_weights).sum(), (h, weight, b))
    for a, e in zip(got, expected):
        assert torch.equal(a, e)


def test_hits_resolve_ties_to_the_first_index():
    """Classes 1 and 4 have the same weights and bias, so every row's logits tie there (small integers: exact in
    any summation order): with the two at the top, a target of 1 is a hit and 4 a miss (torch.argmax's rule, as
    the unfused trainer's hits)."""
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    h = torch.randint(-3, 4, (12, 8), generator=g).double()
    weight, b = torch.randint(-3, 4, (6, 8), generator=g).double(), torch.zeros(6, dtype=torch.float64)
    weight[4] = weight[1]
    b[1] = b[4] = 1000.0  # the tied pair is every row's maximum (|other logits| ≤ 72)
    target = torch.empty(12, dtype=torch.long)
    target[:6], target[6:] = 1, 4
    _, hit = linear_cross_entropy(h, weight, b, target, chunk_rows=5, return_hits=True)
    assert hit.tolist() == [True] * 6 + [False] * 6
    assert torch.equal(hit, F.linear(h, weight, b).argmax(-1) == target)


def test_hits_under_compile():
    h, weight, b, target, _ = problem(30, 8, 20, seed=6, dtype=torch.float32)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda *a: linear_cross_entropy(*a, chunk_rows=7, return_hits=True), backend=counter,
                             fullgraph=True)
    ce, hit = compiled(h, weight, b, target)
    assert torch.equal(hit, F.linear(h, weight, b).argmax(-1) == target)
    torch.testing.assert_close(ce, plain(h, weight, b, target), rtol=1e-5, atol=1e-6)
    dh, = torch.autograd.grad(ce.sum(), (h,))
    torch.testing.assert_close(dh, torch.autograd.grad(plain(h, weight, b, target).sum(), (h,))[0], rtol=1e-5,
                               atol=1e-6)
    assert counter.frame_count == 1
