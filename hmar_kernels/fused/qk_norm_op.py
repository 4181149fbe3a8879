"""q/k L2-normalisation with the per-head temperature, forward and backward in one Triton kernel each.

    q_out = q / max(‖q‖, ε) · exp(min(θ_h, ln 100)),   k_out = k / max(‖k‖, ε)      (ε = 1e-12, F.normalize's)

q, k: (B, H, L, D) with any strides whose last dimension is contiguous (views of the fused qkv projection);
θ: (H,) log temperatures (the model's ``scale_mul_1H11`` flattened). Outputs are fresh contiguous (B, H, L, D)
in q's dtype; the math runs in fp32 (fp64 for fp64 inputs) and rounds once, as the eager formulation under
autocast does (F.normalize returns fp32 there, cast to v's dtype after the temperature).

The kernels take the temperature t = exp(min(θ, ln 100)) (H,), computed by torch, and return dt: autograd
differentiates the clamp and exp, and no float literal of the clamp enters a kernel (Triton makes Python float
constants fp32, which cost the fp64 path its accuracy on the GPU at clamped heads).

Why a kernel: under torch.compile the backward of this formulation is the largest fused kernel left in an HMAR
step (≈ 0.47 ms per d16 layer at 256 px, B = 32 on an H200) because dθ reduces over (B, L, D) across a layout
Inductor splits badly. Here one program owns BLOCK_L rows of one (batch, head), reads q, k and the two output
gradients once, writes dq, dk and one fp32 partial of dt; the partials (row blocks × B·H) are summed by torch.

Registered as torch.library custom ops with fake implementations, so torch.compile(fullgraph=True) keeps them in
its graph; autograd is wired with ``register_autograd``.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

MAX_LOG_TEMPERATURE = math.log(100.0)
NORM_EPS = 1e-12  # F.normalize's default
BLOCK_L = 32  # rows per program: D = 64 bf16 → 4 KB per operand tile; enough rows to hide the load latency


@triton.jit
def _row_tile(ptr, b, h, offs_l, L, s_b, s_h, s_l, D: tl.constexpr):
    """Pointers and mask of a (BLOCK_L, D) tile of rows offs_l of (b, h) in a tensor of strides (s_b, s_h, s_l, 1)."""
    offs_d = tl.arange(0, D)
    base = ptr + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    return base + offs_l[:, None].to(tl.int64) * s_l + offs_d[None, :], offs_l[:, None] < L


@triton.jit
def _program_rows(q_ptr, k_ptr, t_ptr, H, L, sq_b, sq_h, sq_l, sk_b, sk_h, sk_l,
                  D: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    """This program's (b·h, b, h), its BLOCK rows, head h's temperature and the q / k row tiles (+ row mask)."""
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    offs_l = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    t = tl.load(t_ptr + h).to(COMPUTE)
    q_ptrs, mask = _row_tile(q_ptr, b, h, offs_l, L, sq_b, sq_h, sq_l, D)
    k_ptrs, _ = _row_tile(k_ptr, b, h, offs_l, L, sk_b, sk_h, sk_l, D)
    return bh, b, h, offs_l, t, q_ptrs, k_ptrs, mask


@triton.jit
def qk_norm_fwd_kernel(q_ptr, k_ptr, t_ptr, qo_ptr, ko_ptr, H, L,
                       sq_b, sq_h, sq_l, sk_b, sk_h, sk_l,
                       D: tl.constexpr, BLOCK: tl.constexpr, EPS: tl.constexpr, COMPUTE: tl.constexpr):
    bh, b, h, offs_l, t, q_ptrs, k_ptrs, mask = _program_rows(q_ptr, k_ptr, t_ptr, H, L, sq_b, sq_h, sq_l,
                                                              sk_b, sk_h, sk_l, D, BLOCK, COMPUTE)
    q = tl.load(q_ptrs, mask=mask, other=0.0).to(COMPUTE)
    k = tl.load(k_ptrs, mask=mask, other=0.0).to(COMPUTE)
    q_scale = t / tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), EPS)  # (BLOCK,)
    k_scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), EPS)
    # Outputs are contiguous (B, H, L, D): strides (H·L·D, L·D, D, 1).
    qo_ptrs, _ = _row_tile(qo_ptr, b, h, offs_l, L, H * L * D, L * D, D, D)
    ko_ptrs, _ = _row_tile(ko_ptr, b, h, offs_l, L, H * L * D, L * D, D, D)
    tl.store(qo_ptrs, (q * q_scale[:, None]).to(qo_ptr.dtype.element_ty), mask=mask)
    tl.store(ko_ptrs, (k * k_scale[:, None]).to(ko_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normalize_bwd(x, dy, EPS: tl.constexpr):
    """y = x / max(‖x‖, ε) per row: (dx, y) from dy. dx = (dy − y·(y·dy)) / ‖x‖ (just dy / ε below ε)."""
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    inv = 1.0 / tl.maximum(norm, EPS)
    y = x * inv[:, None]
    proj = tl.where(norm >= EPS, tl.sum(y * dy, axis=1), 0.0)
    return (dy - y * proj[:, None]) * inv[:, None], y


@triton.jit
def qk_norm_bwd_kernel(q_ptr, k_ptr, t_ptr, dqo_ptr, dko_ptr, dq_ptr, dk_ptr, dt_part_ptr, H, L,
                       sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sdq_b, sdq_h, sdq_l, sdk_b, sdk_h, sdk_l,
                       D: tl.constexpr, BLOCK: tl.constexpr, EPS: tl.constexpr, COMPUTE: tl.constexpr):
    bh, b, h, offs_l, t, q_ptrs, k_ptrs, mask = _program_rows(q_ptr, k_ptr, t_ptr, H, L, sq_b, sq_h, sq_l,
                                                              sk_b, sk_h, sk_l, D, BLOCK, COMPUTE)
    dqo_ptrs, _ = _row_tile(dqo_ptr, b, h, offs_l, L, sdq_b, sdq_h, sdq_l, D)
    dko_ptrs, _ = _row_tile(dko_ptr, b, h, offs_l, L, sdk_b, sdk_h, sdk_l, D)
    dqo = tl.load(dqo_ptrs, mask=mask, other=0.0).to(COMPUTE)
    dq, q_unit = _normalize_bwd(tl.load(q_ptrs, mask=mask, other=0.0).to(COMPUTE), dqo * t, EPS)
    dk, _ = _normalize_bwd(tl.load(k_ptrs, mask=mask, other=0.0).to(COMPUTE), tl.load(dko_ptrs, mask=mask,
                                                                                       other=0.0).to(COMPUTE), EPS)
    dq_ptrs, _ = _row_tile(dq_ptr, b, h, offs_l, L, H * L * D, L * D, D, D)
    dk_ptrs, _ = _row_tile(dk_ptr, b, h, offs_l, L, H * L * D, L * D, D, D)
    tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=mask)
    tl.store(dk_ptrs, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    # d q_out / d t = q_unit; one partial of Σ dq_out · q_unit per (row block, b·h).
    tl.store(dt_part_ptr + tl.program_id(0) * tl.num_programs(1) + bh, tl.sum(tl.sum(dqo * q_unit, axis=1), axis=0))


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(q: torch.Tensor):
    B, H, L, _ = q.shape
    return triton.cdiv(L, BLOCK_L), B * H


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("hmar_kernels::qk_norm_forward", mutates_args=())
def qk_norm_forward(q: torch.Tensor, k: torch.Tensor, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q / ‖q‖ · t_h, k / ‖k‖), contiguous (B, H, L, D) in q's dtype; temperature (H,) in the compute dtype."""
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(q.shape, dtype=q.dtype,
                                                                                   device=q.device)
    H, L, D = q.shape[1:]
    qk_norm_fwd_kernel[_grid(q)](q, k, temperature, q_out, k_out, H, L, *q.stride()[:3], *k.stride()[:3], D=D,
                                 BLOCK=BLOCK_L, EPS=NORM_EPS, COMPUTE=_compute_dtype(q.dtype))
    return q_out, k_out


@qk_norm_forward.register_fake
def _qk_norm_forward_fake(q, k, temperature):
    return q.new_empty(q.shape).contiguous(), q.new_empty(q.shape).contiguous()


@torch.library.custom_op("hmar_kernels::qk_norm_backward", mutates_args=())
def qk_norm_backward(dq_out: torch.Tensor, dk_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk) contiguous (B, H, L, D) in q's dtype and dt (H,) in the temperature's dtype."""
    q, k, dq_out, dk_out = (_last_dim_contiguous(t) for t in (q, k, dq_out, dk_out))
    B, H, L, D = q.shape
    dq, dk = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(q.shape, dtype=q.dtype,
                                                                             device=q.device)
    grid = _grid(q)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    partials = torch.empty(grid[0], B, H, dtype=compute, device=q.device)  # (row blocks, B, H)
    qk_norm_bwd_kernel[grid](q, k, temperature, dq_out, dk_out, dq, dk, partials, H, L, *q.stride()[:3],
                             *k.stride()[:3], *dq_out.stride()[:3], *dk_out.stride()[:3], D=D, BLOCK=BLOCK_L,
                             EPS=NORM_EPS, COMPUTE=_compute_dtype(q.dtype))
    return dq, dk, partials.sum(dim=(0, 1)).to(temperature.dtype)


@qk_norm_backward.register_fake
def _qk_norm_backward_fake(dq_out, dk_out, q, k, temperature):
    return (q.new_empty(q.shape).contiguous(), q.new_empty(q.shape).contiguous(),
            temperature.new_empty(temperature.shape))


def _setup_context(ctx, inputs, output):
    q, k, temperature = inputs
    ctx.save_for_backward(q, k, temperature)


def _backward(ctx, dq_out, dk_out):
    q, k, temperature = ctx.saved_tensors
    dq_out = torch.zeros_like(q) if dq_out is None else dq_out
    dk_out = torch.zeros_like(k) if dk_out is None else dk_out
    return qk_norm_backward(dq_out, dk_out, q, k, temperature)


qk_norm_forward.register_autograd(_backward, setup_context=_setup_context)


def qk_norm_reference(q: torch.Tensor, k: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same function in plain PyTorch (the model's eager formulation under autocast): at least fp32 math,
    one rounding to q's dtype at the end."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    temperature = theta.to(compute).clamp(max=MAX_LOG_TEMPERATURE).exp().view(1, -1, 1, 1)
    q_out = torch.nn.functional.normalize(q.to(compute), dim=-1, eps=NORM_EPS).mul(temperature)
    return q_out.to(q.dtype), torch.nn.functional.normalize(k.to(compute), dim=-1, eps=NORM_EPS).to(q.dtype)


def kernel_problem(q: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot take these inputs, or None."""
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return f"q is on {q.device} (the kernel needs CUDA, or TRITON_INTERPRET=1 on the CPU)"
    D = q.shape[-1]
    if D & (D - 1) or not 16 <= D <= 256:
        return f"head dim D = {D} is not a power of two in [16, 256]"
    return None


def _validate(q, k, theta):
    for name, t in (("q", q), ("k", k), ("theta", theta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, H, L, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if k.dtype != q.dtype or not q.is_floating_point():
        raise TypeError(f"q and k must share one floating dtype, got {q.dtype} and {k.dtype}")
    if theta.shape != (q.shape[1],):
        raise ValueError(f"theta must be (H,) = ({q.shape[1]},) log temperatures, got {tuple(theta.shape)}")
    if not (q.device == k.device == theta.device):
        raise ValueError(f"q, k, theta must be on one device, got {q.device}, {k.device}, {theta.device}")


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str):
    import warnings

    warnings.warn(f"hmar_kernels.fused.qk_norm: {reason}; using the unfused PyTorch formulation", stacklevel=3)


def qk_norm(q: torch.Tensor, k: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q / ‖q‖ · exp(min(θ_h, ln 100)), k / ‖k‖) per (B, H, L) row in q's dtype, differentiable in q, k, θ.

    q, k: (B, H, L, D) (any strides); theta: (H,). The Triton kernel runs on CUDA (and on the CPU under
    TRITON_INTERPRET=1); elsewhere the plain formulation runs, with a one-time warning saying why.
    """
    _validate(q, k, theta)
    problem = kernel_problem(q)
    if problem is not None:
        _warn_once(problem)
        return qk_norm_reference(q, k, theta)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    return qk_norm_forward(q, k, theta.to(compute).clamp(max=MAX_LOG_TEMPERATURE).exp())
