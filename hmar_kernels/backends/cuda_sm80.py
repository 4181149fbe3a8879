"""Backend "cuda_sm80": the sm80 CUDA kernels (mma.sync, cp.async pipeline; csrc/*_sm80.*), forward and backward,
for A100-class GPUs (sm80, sm86, sm89); they run on Hopper too. The launch code is backends/cuda.py's: a plan of
backend "cuda_sm80" selects arch 80.
"""
from __future__ import annotations

from . import cuda

ARCH = 80
run_forward, run_backward = cuda.run_forward, cuda.run_backward


def problem(device, dtype, head_dim) -> str | None:
    """Why backend 'cuda_sm80' cannot run on such inputs, or None."""
    return cuda.problem(device, dtype, head_dim, ARCH)


def forward(q, k, v, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float):
    """out (B, H, L, D), lse (B, H, L) fp32: see cuda.forward."""
    return cuda.forward(q, k, v, patch_nums, row_bits, softmax_scale, ARCH)


def backward(dout, q, k, v, out, lse, patch_nums: tuple[int, ...], row_bits: tuple[int, ...],
             softmax_scale: float):
    """(dq, dk, dv): see cuda.backward."""
    return cuda.backward(dout, q, k, v, out, lse, patch_nums, row_bits, softmax_scale, ARCH)
