"""Host side of the Triton backend: run a launch plan (plan.LaunchPlan). The first call of each pass picks the
kernel config (autotuning it on that call's tensors) and stores the kernel's launch in the plan; every call then
builds the arguments and launches. No syncs, no loops over scales."""
from __future__ import annotations

import functools
import math

import torch

from ...buffers import new_output, tma_ready
from ...plan import LaunchPlan, launch_plan
from ...tiles import LaunchTables, TileMask, forward_tables, launch_order, tile_mask, transpose_bits
from . import tuning
from .bwd import attn_bwd_kernel, bwd_preprocess_kernel
from .fwd import attn_fwd_kernel
from .cached_launch import CachedLaunch, KernelLaunch, descriptor

PREPROCESS_BLOCK = 128
LOG2E = math.log2(math.e)  # host copy of fwd.LOG2E, to fold into qk_scale
_fwd = CachedLaunch(attn_fwd_kernel)
_bwd = CachedLaunch(attn_bwd_kernel)
_preprocess = CachedLaunch(bwd_preprocess_kernel)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tests hold them to fp32 accuracy); 16-bit inputs ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def forward(q, k, v, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float):
    """q, k, v: (B, H, L, D) → out (B, H, L, D) in q's dtype, lse (B, H, L) fp32 natural-log units."""
    return run_forward(launch_plan("triton", patch_nums, row_bits, softmax_scale, q), q, k, v)


def run_forward(plan: LaunchPlan, q, k, v):
    """``forward`` under a plan for q, k, v's shape, dtype and device."""
    q, k, v = (tma_ready(t) for t in (q, k, v))
    B, H, L, D = q.shape
    out = new_output((B, H, L, D), q.dtype, q.device)
    lse = new_output((B, H, L), torch.float32, q.device)
    if q.numel() == 0:
        return out, lse
    kernel = plan.triton_forward
    if kernel is None:
        kernel = plan.triton_forward = _tuned_launch(
            plan, "fwd", _fwd, forward_tables, plan.options.triton_fwd,
            lambda launch: forward_args(launch, q, k, v, out, lse, plan.softmax_scale))
    kernel.run(forward_args(kernel, q, k, v, out, lse, plan.softmax_scale))
    return out, lse


def forward_args(kernel: KernelLaunch, q, k, v, out, lse, softmax_scale: float) -> list:
    """The forward kernel's arguments ahead of its tables and constexprs."""
    config = kernel.config
    return [descriptor(q, config.block_m), descriptor(k, config.block_n), descriptor(v, config.block_n), out, lse,
            q.shape[1], q.shape[2], softmax_scale * LOG2E]


def _tuned_launch(plan: LaunchPlan, name: str, launcher: CachedLaunch, build_tables, fixed, args_of) -> KernelLaunch:
    """The launch of the forward ("fwd") or backward ("bwd") kernel, one program per row of its program table,
    with the config chosen by tuning.choose (``fixed`` if set; else autotuned on a key's first call, running each
    candidate with ``args_of(launch)``)."""
    B, H, L, D = plan.shape

    def launch_of(config) -> KernelLaunch:
        tables = build_tables(plan.patch_nums, plan.row_bits, config.block_m, config.block_n, B * H, plan.device)
        return KernelLaunch(launcher, (tables.programs, 1, 1), tables,
                            (D, config.block_m, config.block_n, _dot_precision(plan.dtype)), config.num_warps,
                            config.num_stages, config)

    def trial(config):
        candidate = launch_of(config)
        candidate.run(args_of(candidate))

    return launch_of(tuning.choose(name, fixed, (plan.patch_nums, plan.row_bits, D, plan.dtype, plan.device), trial))


def backward(dout, q, k, v, out, lse, patch_nums: tuple[int, ...], row_bits: tuple[int, ...],
             softmax_scale: float):
    """Gradients (dq, dk, dv) of ``forward``'s out, each (B, H, L, D) in its input's dtype."""
    return run_backward(launch_plan("triton", patch_nums, row_bits, softmax_scale, q), dout, q, k, v, out, lse)


def run_backward(plan: LaunchPlan, dout, q, k, v, out, lse):
    """``backward`` under a plan for q's shape, dtype and device (also the CUDA backends' plans, under
    KernelOptions(cuda_backward="triton"))."""
    dout, q, k, v = (tma_ready(t) for t in (dout, q, k, v))
    out = out if out.stride(-1) == 1 else out.contiguous()
    B, H, L, D = q.shape
    delta = new_output((B, H, L), torch.float32, q.device)
    dq = new_output((B, H, L, D), q.dtype, q.device)
    dk = new_output((B, H, L, D), k.dtype, q.device)
    dv = new_output((B, H, L, D), v.dtype, q.device)
    if q.numel() == 0:
        return dq, dk, dv
    preprocess = plan.triton_preprocess or _preprocess_launch(plan)
    preprocess.run(preprocess_args(out, dout, delta))
    kernel = plan.triton_backward
    if kernel is None:
        kernel = plan.triton_backward = _tuned_launch(
            plan, "bwd", _bwd, _bwd_tables, plan.options.triton_bwd,
            lambda launch: backward_args(launch, dout, q, k, v, lse, delta, dq, dk, dv, plan.softmax_scale))
    kernel.run(backward_args(kernel, dout, q, k, v, lse, delta, dq, dk, dv, plan.softmax_scale))
    return dq, dk, dv


def _preprocess_launch(plan: LaunchPlan) -> KernelLaunch:
    """plan.triton_preprocess: delta = rowsum(out · dout), (B, H, L) fp32."""
    B, H, L, D = plan.shape
    plan.triton_preprocess = KernelLaunch(_preprocess, (math.ceil(L / PREPROCESS_BLOCK), B * H, 1), None,
                                          (D, PREPROCESS_BLOCK), 4, 3)
    return plan.triton_preprocess


def preprocess_args(out, dout, delta) -> list:
    return [out, dout, delta, *out.stride()[:3], *dout.stride()[:3], out.shape[1], out.shape[2]]


@functools.lru_cache(maxsize=256)
def _bwd_tables(patch_nums, row_bits, block_m, block_n, batch_heads, device) -> LaunchTables:
    """Tables of a backward launch, packed and cached: the transposed pattern's TileMask (rows = keys, for dK/dV),
    the forward's (for dQ), and the program table: kind 0 = dK/dV of a key tile, kind 1 = dQ of a query tile."""
    keys = tile_mask(patch_nums, transpose_bits(row_bits), block_n, block_m, device)
    queries = tile_mask(patch_nums, row_bits, block_m, block_n, device)
    tables = {f"{side}.{name}": mask.host[name] for side, mask in (("keys", keys), ("queries", queries))
              for name in TileMask.KERNEL_FIELDS}
    # Cost of a program ∝ inner iterations × matmuls per iteration (dK/dV: 4, dQ: 3).
    tables["programs"] = launch_order([4 * keys.visits, 3 * queries.visits], batch_heads)
    return LaunchTables.packed(tables, device)


def backward_args(kernel: KernelLaunch, dout, q, k, v, lse, delta, dq, dk, dv, softmax_scale: float) -> list:
    """The backward kernel's arguments ahead of its tables and constexprs."""
    bm, bn = kernel.config.block_m, kernel.config.block_n
    return [descriptor(q, bm), descriptor(dout, bm), descriptor(k, bn), descriptor(v, bn), dq, dk, dv, lse, delta,
            q.shape[1], q.shape[2], softmax_scale, softmax_scale * LOG2E]
