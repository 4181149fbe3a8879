"""Public entry point: ``attention(q, k, v, patch_nums, pattern, softmax_scale, backend)``.

Validation lives in small ``_validate_*`` functions that raise ValueError/TypeError naming the argument, the
value received and a hint. Everything derived from the schedule is cached, so the call path does no host-device
synchronisation and no Python loop over scales.
"""
from __future__ import annotations

import functools
import math
import numbers
import os
from typing import Sequence, Union

import numpy as np
import torch

from . import ops
from .backends.anchors import ANCHORS
from .notices import warn_once
from .options import KernelOptions, using_options
from .reference import reference_attention
from .tiles import NAMED_PATTERNS, named_pattern_bits, pattern_name, validate_patch_nums

BACKENDS = ("auto", "cuda", "cuda_sm80", "triton", "reference", "sdpa", "flex", "varlen")
KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
TRITON_HEAD_DIMS = (16, 32, 64, 128)

Pattern = Union[str, Sequence[Sequence[bool]], np.ndarray, torch.Tensor]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch_nums: Sequence[int],
              pattern: Pattern = "block_diagonal", softmax_scale: float | None = None,
              backend: str = "auto", options: KernelOptions | None = None) -> torch.Tensor:
    """Attention over a multi-scale token sequence with a scale-level mask.

    Args:
        q, k, v: (B, H, L, D) with L = Σ p² over ``patch_nums``; bf16, fp16 or fp32 (float64 on "reference").
            Any strides; kernels copy only when the last dimension is not contiguous.
        patch_nums: side lengths of the scales, e.g. (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) for 256 px (L = 680).
        pattern: which scales each scale's queries may attend::

            "block_diagonal" (HMAR)   "block_causal" (VAR)    S×S bool matrix, allowed[i][j]:
               x . .                     x . .                 scale i may attend scale j,
               . x .                     x x .                 e.g. own + previous scale:
               . . x                     x x x                 x . . / x x . / . x x

        softmax_scale: multiplies q·k before the softmax; default D^-0.5.
        backend: "auto" (fastest available here), "cuda" (sm90 CUDA kernels), "cuda_sm80" (sm80 CUDA kernels:
            A100-class GPUs, Hopper too), "triton", "reference" (plain PyTorch, the ground
            truth), or the anchors "sdpa" (boolean mask), "flex" (FlexAttention BlockMask) and "varlen"
            (varlen_attn, one sequence per scale; block_diagonal only).
        options: a KernelOptions for this call (kernel configs, autotuning, test switches); default: those of
            the enclosing ``kernel_options`` block, else the defaults.

    Returns:
        (B, H, L, D) in q's dtype. Differentiable with respect to q, k and v.
    """
    if options is not None:
        with using_options(options):
            return attention(q, k, v, patch_nums, pattern, softmax_scale, backend)
    _validate_tensors(q, k, v)
    patch_nums, row_bits, scale, name = _plan(_hashable(patch_nums), _hashable(pattern), softmax_scale, backend,
                                             q.device, q.dtype, tuple(q.shape))
    if name == "reference":
        return reference_attention(q, k, v, patch_nums, row_bits, scale)[0]
    if name in ANCHORS:
        return ANCHORS[name](q, k, v, patch_nums, row_bits, scale)
    return ops.attention_op(q, k, v, patch_nums, row_bits, scale, name)


def _hashable(value):
    """Lists (and nested lists, arrays, CPU tensors) as tuples, so that plans can be cached by value."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise ValueError(f"pattern tensor must be on the CPU (reading it from {value.device} would "
                             "synchronise the device on every call); pass pattern.cpu() once")
        value = value.tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return tuple(_hashable(x) for x in value)
    return value


@torch.compiler.assume_constant_result
def _plan(patch_nums, pattern, softmax_scale, backend, device, dtype, shape):
    """Everything that depends only on the arguments' values, checked once per distinct call and cached.

    Returns (patch_nums, row_bits, softmax_scale, backend). torch.compile evaluates it at trace time. The cache
    key holds the arguments' types too: (1.0, 2.0) equals (1, 2) and True equals 1, yet only the ints are valid.
    """
    types = (_types(patch_nums), _types(pattern), type(softmax_scale))
    try:
        return _cached_plan(patch_nums, pattern, softmax_scale, backend, device, dtype, shape, types)
    except TypeError as error:
        if "unhashable" not in str(error):
            raise
        return _plan_uncached(patch_nums, pattern, softmax_scale, backend, device, dtype, shape, types)


def _types(value):
    """The type of value, and of every element of a (nested) tuple."""
    return tuple(map(_types, value)) if type(value) is tuple else type(value)


def _plan_uncached(patch_nums, pattern, softmax_scale, backend, device, dtype, shape, types=None):
    """_plan's work; ``types`` only makes the cache key type-exact."""
    patch_nums = validate_patch_nums(patch_nums)
    length = sum(p * p for p in patch_nums)
    if shape[2] != length:
        raise ValueError(f"patch_nums {patch_nums} sums to L = Σ p² = {length} but q has L = {shape[2]} "
                         f"(q shape {shape} is (B, H, L, D))")
    row_bits = _validate_pattern(pattern, len(patch_nums))
    scale = _validate_scale(softmax_scale, shape[-1])
    return patch_nums, row_bits, scale, _resolve_backend(backend, device, dtype, shape[-1], row_bits)


_cached_plan = functools.lru_cache(maxsize=1024)(_plan_uncached)


def _validate_tensors(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D), got {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q has {tuple(q.shape)}; they must match")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; they must match")
    if not q.is_floating_point():
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if q.device.type == "meta":
        raise ValueError("q, k, v are meta tensors (shapes without data); attention needs tensors on the CPU or "
                         "a GPU (under torch.compile, fake tensors are handled for you)")
    if q.shape[-1] == 0:
        raise ValueError(f"q, k, v have head dim D = 0 (shape {tuple(q.shape)} is (B, H, L, D)); D must be positive")


def _validate_pattern(pattern, num_scales: int) -> tuple[int, ...]:
    """Row bitmasks of the pattern (bit j of entry i: scale i may attend scale j)."""
    if isinstance(pattern, str):
        if pattern not in NAMED_PATTERNS:
            raise ValueError(f"pattern must be one of {NAMED_PATTERNS} or an S×S boolean matrix, got {pattern!r}")
        return named_pattern_bits(pattern, num_scales)
    try:
        matrix = np.asarray(pattern)
    except (ValueError, TypeError) as error:
        raise TypeError(f"pattern must be a name or an S×S boolean matrix, got {type(pattern).__name__}") from error
    if matrix.dtype == object or not (matrix.dtype == bool or np.issubdtype(matrix.dtype, np.integer)):
        raise TypeError(f"pattern matrix must hold booleans, got dtype {matrix.dtype}")
    if matrix.shape != (num_scales, num_scales):
        raise ValueError(f"pattern matrix must be {num_scales}×{num_scales} (one row and column per scale of "
                         f"patch_nums), got shape {matrix.shape}")
    if not np.isin(matrix, (0, 1)).all():
        raise ValueError("pattern matrix must hold booleans (or 0/1)")
    matrix = matrix.astype(bool)
    empty = np.flatnonzero(~matrix.any(axis=1))
    if empty.size:
        raise ValueError(f"pattern row {int(empty[0])} allows no scale: queries of scale {int(empty[0])} would "
                         "see no key; every row needs at least one True")
    return tuple(int(sum(1 << j for j in np.flatnonzero(row))) for row in matrix)


def _validate_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return head_dim ** -0.5
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be positive and finite, got {softmax_scale}")
    return float(softmax_scale)


def _triton_problem(device, dtype, head_dim) -> str | None:
    """Why the Triton backend cannot run on such inputs, or None."""
    if device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return f"backend 'triton' needs CUDA tensors (q is on {device}; set TRITON_INTERPRET=1 to run on CPU)"
        if dtype == torch.bfloat16:  # its tl.dot goes through numpy, which has no bf16: inf/NaN, silently
            return ("the Triton interpreter's tl.dot is wrong for bf16 operands (inf/NaN), so backend 'triton' "
                    "refuses bf16 under TRITON_INTERPRET=1; use fp16 or fp32 on the CPU, or a GPU")
    if dtype not in KERNEL_DTYPES:
        return f"backend 'triton' supports dtypes bf16, fp16, fp32, got {dtype}"
    if head_dim not in TRITON_HEAD_DIMS:
        return f"backend 'triton' supports head dims {TRITON_HEAD_DIMS}, got D = {head_dim}"
    return None


def _cuda_problem(device, dtype, head_dim, arch: int = 90) -> str | None:
    """Why backend 'cuda' (arch 90) or 'cuda_sm80' (arch 80) cannot run on such inputs, or None."""
    from .backends import cuda

    return cuda.problem(device, dtype, head_dim, arch)


def _varlen_problem(device, dtype, row_bits) -> str | None:
    if pattern_name(row_bits) != "block_diagonal":
        return "backend 'varlen' supports only pattern='block_diagonal' (one independent sequence per scale)"
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return f"backend 'varlen' needs CUDA bf16/fp16 tensors, got {dtype} on {device}"
    return None


def _resolve_backend(backend, device, dtype, head_dim, row_bits) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return _auto_backend(device, dtype, head_dim)
    problem = None
    if backend == "triton":
        problem = _triton_problem(device, dtype, head_dim)
    elif backend == "cuda":
        problem = _cuda_problem(device, dtype, head_dim)
    elif backend == "cuda_sm80":
        problem = _cuda_problem(device, dtype, head_dim, arch=80)
    elif backend == "varlen":
        problem = _varlen_problem(device, dtype, row_bits)
    if problem:
        raise ValueError(problem)
    return backend


def _auto_backend(device, dtype, head_dim) -> str:
    """cuda on sm90, cuda_sm80 on sm80/86/89, where they can run, else triton, else reference; says once why the
    faster path was skipped."""
    if device.type != "cuda":
        warn_once(f"hmar_kernels.attention(backend='auto'): q is on {device}, not CUDA; using the slow "
                   "'reference' backend")
        return "reference"
    major, _ = torch.cuda.get_device_capability(device)
    name, arch = ("cuda_sm80", 80) if major == 8 else ("cuda", 90)
    cuda_problem = _cuda_problem(device, dtype, head_dim, arch)
    if cuda_problem is None:
        return name
    triton_problem = _triton_problem(device, dtype, head_dim)
    if triton_problem is None:
        warn_once(f"hmar_kernels.attention(backend='auto'): using 'triton' because {cuda_problem}")
        return "triton"
    warn_once(f"hmar_kernels.attention(backend='auto'): using the slow 'reference' backend because "
               f"{cuda_problem}; and {triton_problem}")
    return "reference"
