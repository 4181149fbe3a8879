"""Triton backend on the GPU: the real schedules, every autotuning candidate, CUDA graphs, determinism."""
import pytest
import torch

from conftest import REAL_SCHEDULES, requires_cuda
from hmar_kernels import attention, kernel_options
from hmar_kernels.api import _plan
from hmar_kernels.tiles import named_pattern_bits
from hmar_kernels.backends.triton import tuning
from test_triton import run_and_check

pytestmark = [pytest.mark.gpu, requires_cuda]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("px", [256, 512, 1024])
@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_real_schedules(px, pattern, dtype):
    torch.manual_seed(px)
    pn = REAL_SCHEDULES[px]
    run_and_check(pn, named_pattern_bits(pattern, len(pn)), batch=1, heads=2, head_dim=64, dtype=DTYPES[dtype],
                  scale=0.125)


@pytest.mark.parametrize("px", [256, 1024])
def test_head_dim_128(px):
    torch.manual_seed(7)
    pn = REAL_SCHEDULES[px]
    run_and_check(pn, named_pattern_bits("block_causal", len(pn)), batch=1, heads=2, head_dim=128,
                  dtype=torch.bfloat16, scale=128 ** -0.5)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_every_tuning_candidate(head_dim):
    """The autotuner may pick any candidate, so each one must be right (512 px, both patterns)."""
    pn = REAL_SCHEDULES[512]
    fwd = tuning.fwd_candidates(head_dim)
    bwd = tuning.bwd_candidates(head_dim)
    for i in range(max(len(fwd), len(bwd))):
        torch.manual_seed(i)
        with kernel_options(triton_fwd=fwd[i % len(fwd)], triton_bwd=bwd[i % len(bwd)]):
            for pattern in ("block_diagonal", "block_causal"):
                run_and_check(pn, named_pattern_bits(pattern, len(pn)), batch=1, heads=2, head_dim=head_dim,
                              dtype=torch.bfloat16, scale=head_dim ** -0.5)


def test_cuda_graph_capture_of_forward_and_backward():
    """No host sync on the call path: a whole fwd+bwd step captures into a CUDA graph and replays correctly."""
    pn = REAL_SCHEDULES[256]
    shape = (2, 4, 680, 64)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16)

    def step():
        out = attention(q, k, v, pn, "block_causal", backend="triton")
        return (out,) + torch.autograd.grad(out, (q, k, v), dout)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up: compile, autotune, build metadata
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    with torch.no_grad():
        for t in (q, k, v, dout):
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    expected = step()
    for got, want in zip(static, expected):
        assert torch.equal(got, want)


def test_deterministic_run_to_run():
    pn = REAL_SCHEDULES[512]
    q, k, v = (torch.randn(2, 4, 2240, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn_like(q)
    results = []
    for _ in range(2):
        out = attention(q, k, v, pn, "block_diagonal", backend="triton")
        results.append((out,) + torch.autograd.grad(out, (q, k, v), dout))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_auto_uses_a_kernel_backend_on_cuda():
    pn = REAL_SCHEDULES[256]
    q, k, v = (torch.randn(1, 2, 680, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = attention(q, k, v, pn)
    ref = attention(q.float(), k.float(), v.float(), pn, backend="reference")
    assert (out.float() - ref).abs().max().item() < 2e-2
    resolved = _plan(pn, "block_diagonal", None, "auto", q.device, q.dtype, tuple(q.shape))[3]
    assert resolved in ("cuda", "triton")
