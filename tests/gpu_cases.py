"""Cases shared by the CUDA backends' GPU tests (test_cuda_fwd, test_cuda_bwd, test_cuda_sm80): why a backend
cannot run here, the real-schedule grid, the random case of a seed, strided inputs, unsupported inputs, and the
check through the eager C++ plan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import HAS_CUDA, REAL_SCHEDULES, check_close, pattern_of_kind, random_schedule
from hmar_kernels import attention, kernel_options
from hmar_kernels.backends import cuda
from hmar_kernels.reference import reference_attention
from hmar_kernels.tiles import named_pattern_bits
from test_triton import run_and_check

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ARCH = {"cuda": 90, "cuda_sm80": 80}  # our CUDA backends and the arch each is built for


def problem(backend: str, dtype=torch.bfloat16, head_dim: int = 64) -> str | None:
    """Why ``backend`` cannot run (dtype, head_dim) here, or None."""
    if not HAS_CUDA:
        return "needs a CUDA device (none found)"
    return cuda.problem(torch.device("cuda", 0), dtype, head_dim, ARCH[backend])


def module_marks(backend: str) -> list:
    """A test module's pytestmark: GPU-only, skipped with the reason where ``backend`` cannot run at all."""
    why = problem(backend)
    return [pytest.mark.gpu, pytest.mark.skipif(why is not None, reason=str(why))]


def skip_unless_runs(backend: str, dtype, head_dim: int):
    why = problem(backend, dtype, head_dim)
    if why:
        pytest.skip(why)


def real_schedule_params(pxs=tuple(REAL_SCHEDULES)) -> list:
    """(px, pattern, dtype, head_dim) over the real schedules ``pxs``, both patterns, bf16/fp16 and D 64/128."""
    return [pytest.param(px, pattern, dtype, head_dim, id=f"{px}px-{pattern}-{dtype}-d{head_dim}")
            for px in pxs for pattern in ("block_diagonal", "block_causal") for dtype in DTYPES
            for head_dim in (64, 128)]


def real_case(backend: str, px: int, pattern: str, dtype: str, head_dim: int) -> dict:
    """Keyword arguments of run_and_check / check_plan_path for one real-schedule case (seeded; skipped where
    ``backend`` was not built for it): B=1, H=2 at 1024 px, else B=2, H=3."""
    skip_unless_runs(backend, DTYPES[dtype], head_dim)
    torch.manual_seed(px + head_dim)
    pn = REAL_SCHEDULES[px]
    batch, heads = (1, 2) if px == 1024 else (2, 3)
    return dict(patch_nums=pn, row_bits=named_pattern_bits(pattern, len(pn)), batch=batch, heads=heads,
                head_dim=head_dim, dtype=DTYPES[dtype], scale=head_dim ** -0.5)


def random_case(backend: str, seed: int, rng_offset: int = 0) -> dict:
    """Keyword arguments of run_and_check / check_plan_path for seed ``seed``: a random schedule (≤ 6 scales,
    sides ≤ 20) and pattern (diagonal, causal, random S×S in turn), bf16 on even seeds and fp16 on odd ones, D 64
    and 128 every two seeds, odd batch and head counts, a random softmax scale (skipped where ``backend`` was not
    built for it)."""
    rng = np.random.default_rng(rng_offset + seed)
    torch.manual_seed(seed)
    patch_nums = random_schedule(rng, max_scales=6, max_side=20)
    row_bits = pattern_of_kind(rng, seed, len(patch_nums))
    dtype, head_dim = (torch.bfloat16, torch.float16)[seed % 2], (64, 128)[(seed // 2) % 2]
    case = dict(patch_nums=patch_nums, row_bits=row_bits, batch=int(rng.integers(1, 4)),
                heads=int(rng.integers(1, 6)), head_dim=head_dim, dtype=dtype, scale=float(rng.uniform(0.05, 0.5)))
    skip_unless_runs(backend, dtype, head_dim)
    return case


def check_plan_path(patch_nums, row_bits, batch, heads, head_dim, dtype, scale, backend="cuda"):
    """Eager forward + backward through hmar_kernels.attention (the C++ plan: no Python in the backward), outputs
    poisoned; out, dQ, dK, dV against the float64 reference with check_close's rule."""
    shape = (batch, heads, sum(p * p for p in patch_nums), head_dim)
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(4))
    matrix = [[bool((bits >> j) & 1) for j in range(len(patch_nums))] for bits in row_bits]
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with kernel_options(poison_outputs=True):
        out = attention(*leaves, patch_nums, matrix, softmax_scale=scale, backend=backend)
        grads = torch.autograd.grad(out, leaves, dout)
    results = {}
    for ref_dtype in (torch.float64, dtype):
        ref_in = [t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v)]
        ref_out = reference_attention(*ref_in, patch_nums, row_bits, scale)[0]
        results[ref_dtype] = (ref_out, *torch.autograd.grad(ref_out, ref_in, dout.to(ref_dtype)))
    for name, got, gold, base in zip(("out", "dq", "dk", "dv"), (out, *grads), results[torch.float64],
                                     results[dtype]):
        check_close(f"{backend} {name}", got, gold, base)


def check_strided_inputs(backend: str, pattern: str):
    """q, k, v as views of one fused (B, L, 3, H, D) tensor, read through their strides."""
    torch.manual_seed(5)
    pn = (1, 2, 3, 4, 6, 9)
    run_and_check(pn, named_pattern_bits(pattern, len(pn)), batch=2, heads=3, head_dim=64, dtype=torch.bfloat16,
                  scale=0.2, layout="fused_qkv", backend=backend)


def check_unsupported_inputs_say_why(backend: str):
    """fp32 and D = 96: the reason names the backend and what it supports, and the API raises it."""
    assert f"backend '{backend}' supports dtypes" in problem(backend, torch.float32, 64)
    assert f"backend '{backend}' supports head dims" in problem(backend, torch.bfloat16, 96)
    q = torch.randn(1, 1, 5, 64, device="cuda", dtype=torch.float32)
    with pytest.raises(ValueError, match=f"backend '{backend}' supports dtypes"):
        attention(q, q, q, (1, 2), backend=backend)
