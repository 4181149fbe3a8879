"""The kernel backends under the C++ autograd Function (hmar_kernels/backends/native.py, csrc/native_attention.cpp): the
path eager ``attention(..., backend="triton" or "cuda")`` takes on CUDA when the extension is built.

Each case checks the output and all three gradients against the float64 reference (check_close's rule), with
outputs poisoned with NaN before the kernels run, and bit for bit against the same kernels launched from Python
(the custom op, whose autograd runs in Python): a parameter the C++ side fills wrongly shows up as a mismatch
even where the error stays small.
Skips with the reason without a CUDA device or without the extension (HMAR_CUDA_JIT=1 builds it).
"""
import numpy as np
import pytest
import torch

from conftest import HAS_CUDA, REAL_SCHEDULES, check_close, pattern_bits, pattern_of_kind, random_schedule
from hmar_kernels import attention, kernel_options, ops
from hmar_kernels.backends import cuda
from hmar_kernels.reference import reference_attention


def _problem():
    if not HAS_CUDA:
        return "needs a CUDA device (none found)"
    from hmar_kernels.backends import native

    return native._extension()[1]


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_problem() is not None, reason=str(_problem()))]
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _inputs(shape, dtype, layout):
    B, H, L, D = shape
    if layout == "fused_qkv":  # (B, L, 3, H, D) → three strided (B, H, L, D) views
        qkv = torch.randn(B, L, 3, H, D, device="cuda", dtype=dtype)
        return [t.requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).unbind(0)]
    return [torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)]


def _skip_unless_runs(backend, dtype, head_dim):
    why = cuda.problem(torch.device("cuda", 0), dtype, head_dim) if backend == "cuda" else None
    if why:
        pytest.skip(why)


def run_native_and_check(patch_nums, row_bits, batch, heads, head_dim, dtype, scale, layout="contiguous",
                         dout_kind="random", backend="triton"):
    _skip_unless_runs(backend, dtype, head_dim)
    length = sum(p * p for p in patch_nums)
    shape = (batch, heads, length, head_dim)
    q, k, v = (t.detach() for t in _inputs(shape, dtype, layout))
    if dout_kind == "random":
        dout = torch.randn(shape, device="cuda", dtype=dtype)
    else:  # what out.sum().backward() hands over: one value broadcast with zero strides
        dout = torch.ones((), device="cuda", dtype=dtype).expand(shape)
    pattern = np.array([[(bits >> j) & 1 for j in range(len(patch_nums))] for bits in row_bits], dtype=bool)

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with kernel_options(poison_outputs=True):
        out = attention(*leaves, patch_nums, pattern, scale, backend=backend)
        assert "NativeAttention" in out.grad_fn.name(), f"not the C++ path: {out.grad_fn.name()}"
        grads = torch.autograd.grad(out, leaves, dout)
        python_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        python_out, _ = ops.attention_forward(*python_leaves, patch_nums, row_bits, scale, backend)
        python_grads = torch.autograd.grad(python_out, python_leaves, dout)

    golden_in = [t.double().requires_grad_() for t in (q, k, v)]
    golden, _ = reference_attention(*golden_in, patch_nums, row_bits, scale)
    golden_grads = torch.autograd.grad(golden, golden_in, dout.double())
    base_in = [t.clone().requires_grad_() for t in (q, k, v)]
    base, _ = reference_attention(*base_in, patch_nums, row_bits, scale)
    base_grads = torch.autograd.grad(base, base_in, dout)
    for name, got, python, gold, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (python_out, *python_grads),
                                          (golden, *golden_grads), (base, *base_grads)):
        check_close(name, got, gold, b)
        assert torch.equal(got, python), f"{name}: C++ launch differs from the Python launch of the same kernels"


@pytest.mark.parametrize("seed", range(12))
def test_random_schedules_triton(seed):
    """Random schedules, the three pattern kinds, all dtypes and head dims, B and H of 1 (Triton specialises
    ints equal to 1 away), strided inputs on odd seeds."""
    rng = np.random.default_rng(500 + seed)
    torch.manual_seed(seed)
    patch_nums = random_schedule(rng, max_scales=5, max_side=9)
    head_dim = (32, 64, 128)[(seed // 3) % 3]
    dtype = DTYPES[(seed // 4) % 3] if head_dim <= 64 else DTYPES[seed % 2]  # fp32 tiles at D=128 overflow smem
    run_native_and_check(patch_nums, pattern_of_kind(rng, seed, len(patch_nums)), batch=int(rng.integers(1, 3)),
                         heads=int(rng.integers(1, 4)), head_dim=head_dim, dtype=dtype,
                         scale=float(rng.uniform(0.05, 0.5)), layout=("contiguous", "fused_qkv")[seed % 2])


@pytest.mark.parametrize("seed", range(8))
def test_random_schedules_cuda(seed):
    """The CUDA forward and backward called from C++ (their tables, scheduler counter and stream) under random
    schedules."""
    rng = np.random.default_rng(700 + seed)
    torch.manual_seed(seed)
    patch_nums = random_schedule(rng, max_scales=5, max_side=12)
    run_native_and_check(patch_nums, pattern_of_kind(rng, seed, len(patch_nums)), batch=int(rng.integers(1, 3)),
                         heads=int(rng.integers(1, 4)), head_dim=(64, 128)[seed % 2],
                         dtype=(torch.bfloat16, torch.float16)[(seed // 2) % 2], scale=float(rng.uniform(0.05, 0.5)),
                         layout=("contiguous", "fused_qkv")[(seed // 4) % 2], backend="cuda")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("px", [256, 1024])
@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_real_schedules(backend, px, pattern):
    from hmar_kernels.tiles import named_pattern_bits

    torch.manual_seed(px)
    pn = REAL_SCHEDULES[px]
    run_native_and_check(pn, named_pattern_bits(pattern, len(pn)), batch=2, heads=3, head_dim=64,
                         dtype=torch.bfloat16, scale=0.125, backend=backend)


@pytest.mark.parametrize("scheduler", ["dynamic", "static", "grid"])
def test_cuda_schedulers(scheduler):
    torch.manual_seed(5)
    with kernel_options(cuda_scheduler=scheduler):
        run_native_and_check(REAL_SCHEDULES[512], pattern_bits(np.tril(np.ones((10, 10), dtype=bool))), batch=1,
                             heads=2, head_dim=64, dtype=torch.bfloat16, scale=0.125, backend="cuda")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_broadcast_dout(backend):
    """A zero-stride dout (out.sum().backward()) is made readable before the kernels see it."""
    torch.manual_seed(1)
    run_native_and_check((1, 2, 3, 5), pattern_bits(np.tril(np.ones((4, 4), dtype=bool))), batch=2, heads=2,
                         head_dim=64, dtype=torch.float16, scale=0.125, dout_kind="broadcast", backend=backend)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_forward_without_grad_matches(backend, mode):
    _skip_unless_runs(backend, torch.bfloat16, 64)
    torch.manual_seed(2)
    pn = REAL_SCHEDULES[256]
    q, k, v = (torch.randn(1, 2, 680, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context, kernel_options(poison_outputs=True):
        out = attention(q, k, v, pn, "block_causal", backend=backend)
    from hmar_kernels.tiles import named_pattern_bits

    golden, _ = reference_attention(q.double(), k.double(), v.double(), pn, named_pattern_bits("block_causal", 10),
                                    64 ** -0.5)
    base, _ = reference_attention(q, k, v, pn, named_pattern_bits("block_causal", 10), 64 ** -0.5)
    check_close("out", out, golden, base)


def test_gradient_only_for_inputs_that_require_it():
    """q alone requires grad (k, v fixed): its gradient matches the reference, and k, v get none."""
    torch.manual_seed(4)
    pn = (1, 2, 3, 4)
    q, k, v = (torch.randn(2, 2, 30, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    dout = torch.randn_like(q)
    leaf = q.clone().requires_grad_()
    out = attention(leaf, k, v, pn, "block_causal", backend="triton")
    out.backward(dout)
    assert k.grad is None and v.grad is None
    from hmar_kernels.tiles import named_pattern_bits

    bits = named_pattern_bits("block_causal", 4)
    golden_q = q.double().requires_grad_()
    reference_attention(golden_q, k.double(), v.double(), pn, bits, 0.125)[0].backward(dout.double())
    base_q = q.clone().requires_grad_()
    reference_attention(base_q, k, v, pn, bits, 0.125)[0].backward(dout)
    check_close("dq", leaf.grad, golden_q.grad, base_q.grad)


def test_register_refuses_codes_that_do_not_match_the_kernel():
    """A parameter list that differs from the cubin's is refused at registration, never launched."""
    from hmar_kernels.api import _plan
    from hmar_kernels.backends import native
    from hmar_kernels.backends.triton import host
    from hmar_kernels.plan import launch_plan

    pn = (1, 2, 3)
    q, k, v = (torch.randn(1, 1, 14, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    _, row_bits, scale, _ = _plan(pn, "block_diagonal", None, "triton", q.device, q.dtype, tuple(q.shape))
    plan = launch_plan("triton", pn, row_bits, scale, q)
    out, lse = host.run_forward(plan, q, k, v)
    forward = plan.triton_forward
    args = host.forward_args(forward, q, k, v, out, lse, scale)
    slots = {id(t): i for i, t in enumerate((q, k, v, out, lse))}
    ext = native._extension()[0]
    spec = native.kernel_spec(ext, forward, args, slots)
    codes = spec.codes

    def plan_with_backward(backward_codes):
        plan = ext.PlanSpec()
        plan.triton_forward = plan.preprocess = spec
        backward = native.kernel_spec(ext, forward, args, slots)
        backward.codes = backward_codes
        plan.backward = backward
        plan.tables, plan.like, plan.poison = list(forward.tables.tensors), q, False
        return plan

    assert ext.register_plan(plan_with_backward(codes)) >= 0
    for broken in (codes[:-1], codes + [[native.POINTER, 0]], [[native.INT64, 0]] + codes[1:]):
        with pytest.raises(ValueError, match="do not match the compiled kernel"):
            ext.register_plan(plan_with_backward(broken))
    both = plan_with_backward(codes)
    both.cuda_forward = ext.CudaForward()
    with pytest.raises(ValueError, match="exactly one forward"):
        ext.register_plan(both)


def test_launch_hooks_route_calls_through_triton(monkeypatch):
    """With a profiler's launch hooks installed, calls go through Triton's launcher (which calls the hooks)."""
    from hmar_kernels.backends import native

    q, k, v = (torch.randn(1, 2, 14, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    assert "NativeAttention" in attention(q, k, v, (1, 2, 3), backend="triton").grad_fn.name()
    monkeypatch.setattr(native, "launch_hooks_set", lambda: True)
    assert "NativeAttention" not in attention(q, k, v, (1, 2, 3), backend="triton").grad_fn.name()
