"""CUDA graphs through hmar_kernels.attention, for every backend (skipped without a GPU).

* A forward + backward captured with torch.cuda.graph after a warm-up on a side stream, replayed on new inputs,
  gives the eager output and gradients of those inputs (bit for bit for our kernels and the reference; within
  check_close's rule for the anchors, whose kernels may differ between runs). Our kernels run both ways: through
  the C++ autograd Function (its backward runs on the autograd engine's thread, which may have no current CUDA
  context) and launched from Python.
* torch.compile(mode="reduce-overhead") (cudagraph trees: warm-up, recording, replays) over several steps gives
  the eager results of each step's fresh inputs; tables built lazily on the first step must stay outside the
  graphs' memory pool.
* Capturing a call whose tables were never built fails with a clear message instead of corrupting the capture.
"""
import importlib.util

import pytest
import torch

from conftest import HAS_CUDA, REAL_SCHEDULES, check_close
from hmar_kernels import attention
from hmar_kernels.backends import cuda
from hmar_kernels.reference import reference_attention
from hmar_kernels.tiles import named_pattern_bits

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none found)")]

BACKENDS = ("triton", "cuda", "cuda_sm80", "sdpa", "flex", "varlen", "reference")
DETERMINISTIC = ("triton", "cuda", "reference")  # cuda_sm80 sums dQ with atomics
OURS_CUDA = {"cuda": 90, "cuda_sm80": 80}  # our CUDA backends and their arch
PATCH_NUMS = REAL_SCHEDULES[256]
SHAPE = (2, 4, sum(p * p for p in PATCH_NUMS), 64)  # (B, H, L, D)


def _cases():
    for backend in BACKENDS:
        for pattern in ("block_diagonal", "block_causal"):
            if backend == "varlen" and pattern != "block_diagonal":
                continue
            yield pytest.param(backend, pattern, id=f"{backend}-{pattern}")


def _skip_unless_runs(backend):
    if backend in OURS_CUDA:
        why = cuda.problem(torch.device("cuda", 0), torch.bfloat16, SHAPE[-1], OURS_CUDA[backend])
        if why:
            pytest.skip(why)
    if backend == "varlen" and importlib.util.find_spec("torch.nn.attention.varlen") is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")


def _fresh(seed):
    """New bf16 inputs and output gradient."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16, generator=generator) for _ in range(4)]


def _eager(backend, pattern, q, k, v, dout):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, PATCH_NUMS, pattern, backend=backend)
    out.backward(dout)
    return out.detach(), *(t.grad for t in leaves)


def _check(backend, pattern, results, q, k, v, dout):
    """results (out, dq, dk, dv) against eager on the same inputs (bit for bit where deterministic) and the
    float64 reference."""
    eager = _eager(backend, pattern, q, k, v, dout)
    names = ("out", "dq", "dk", "dv")
    if backend in DETERMINISTIC:
        for name, got, want in zip(names, results, eager):
            assert torch.equal(got, want), f"{backend} {name}: the graph differs from eager"
    bits = named_pattern_bits(pattern, len(PATCH_NUMS))
    golden, baseline = (_reference(bits, [t.to(dtype) for t in (q, k, v)], dout.to(dtype))
                        for dtype in (torch.float64, torch.bfloat16))
    for name, got, gold, base in zip(names, results, golden, baseline):
        check_close(f"{backend} {name}", got, gold, base)


def _reference(bits, inputs, dout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = reference_attention(*leaves, PATCH_NUMS, bits, SHAPE[-1] ** -0.5)[0]
    out.backward(dout)
    return out.detach(), *(t.grad for t in leaves)


@pytest.fixture(params=["native", "python"])
def launch_path(request, monkeypatch):
    """Our kernels through the C++ autograd Function where the extension has it, or launched from Python."""
    if request.param == "python":
        from hmar_kernels.backends import native

        monkeypatch.setattr(native, "plan_id", lambda *args, **kwargs: None)
    return request.param


@pytest.mark.parametrize("backend, pattern", _cases())
def test_cuda_graph_forward_backward_replays_eager_results(backend, pattern, launch_path):
    if launch_path == "python" and backend not in ("triton", *OURS_CUDA):
        pytest.skip("only our kernels have two launch paths")
    _skip_unless_runs(backend)
    q, k, v, dout = _fresh(0)
    static = [t.clone().requires_grad_() for t in (q, k, v)]

    def step():
        out = attention(*static, PATCH_NUMS, pattern, backend=backend)
        out.backward(dout)
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
            for t in static:
                t.grad = None
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for seed in (1, 2):
        new_q, new_k, new_v, new_dout = _fresh(seed)
        with torch.no_grad():
            for t, new in zip((*static, dout), (new_q, new_k, new_v, new_dout)):
                t.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        _check(backend, pattern, (static_out, *(t.grad for t in static)), new_q, new_k, new_v, new_dout)


@pytest.mark.parametrize("backend, pattern", _cases())
def test_reduce_overhead_compile_gives_eager_results(backend, pattern):
    _skip_unless_runs(backend)
    torch._dynamo.reset()

    def step(q, k, v):
        return attention(q, k, v, PATCH_NUMS, pattern, backend=backend)

    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):  # warm-up, recording, then replays
        torch.compiler.cudagraph_mark_step_begin()
        q, k, v, dout = _fresh(10 + seed)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = compiled(*leaves)
        out.backward(dout)
        results = (out.detach().clone(), *(t.grad.clone() for t in leaves))
        eager = _eager(backend, pattern, q, k, v, dout)
        bits = named_pattern_bits(pattern, len(PATCH_NUMS))
        golden, baseline = (_reference(bits, [t.to(dtype) for t in (q, k, v)], dout.to(dtype))
                            for dtype in (torch.float64, torch.bfloat16))
        for name, got, want, gold, base in zip(("out", "dq", "dk", "dv"), results, eager, golden, baseline):
            check_close(f"{backend} step {seed} {name}", got, gold, base)
            check_close(f"{backend} step {seed} {name} (eager)", want, gold, base)


@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda_sm80"])
def test_capture_before_warm_up_is_refused_clearly(backend, launch_path):
    """The first call of a new schedule builds its tables, which a capture cannot do: a clear error, not a
    corrupted capture (a schedule no other test uses, so nothing is cached yet)."""
    _skip_unless_runs(backend)
    patch_nums = (1, 3, 7 + ["triton", "cuda", "cuda_sm80"].index(backend) * 2 + (launch_path != "native"))
    shape = (1, 2, sum(p * p for p in patch_nums), 64)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with torch.no_grad():
        graph = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match="warm-up"):
            with torch.cuda.graph(graph):
                attention(q, k, v, patch_nums, backend=backend)
