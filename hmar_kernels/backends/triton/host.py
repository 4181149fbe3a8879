"""Host side of the Triton backend: pick configs, fetch cached metadata, launch. No syncs, no loops over scales."""
from __future__ import annotations

import functools
import math

import torch

from ...buffers import new_output, tma_ready
from ...options import current_options
from ...tiles import LaunchTables, TileMask, forward_tables, launch_order, tile_mask, transpose_bits
from . import tuning
from .bwd import attn_bwd_kernel, bwd_preprocess_kernel
from .fwd import attn_fwd_kernel
from .cached_launch import CachedLaunch, KernelCall, descriptor

PREPROCESS_BLOCK = 128
LOG2E = math.log2(math.e)  # host copy of fwd.LOG2E, to fold into qk_scale
_fwd = CachedLaunch(attn_fwd_kernel)
_bwd = CachedLaunch(attn_bwd_kernel)
_preprocess = CachedLaunch(bwd_preprocess_kernel)


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


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tests hold them to fp32 accuracy); 16-bit inputs ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def fwd_call(config: tuning.FwdConfig, q, k, v, out, lse, patch_nums, row_bits, softmax_scale) -> KernelCall:
    B, H, L, D = q.shape
    tables = forward_tables(patch_nums, row_bits, config.block_m, config.block_n, B * H, q.device)
    return KernelCall(_fwd, (tables.programs, 1, 1),
                      [descriptor(q, config.block_m), descriptor(k, config.block_n), descriptor(v, config.block_n),
                       out, lse, H, L, softmax_scale * LOG2E],
                      tables, (D, config.block_m, config.block_n, _dot_precision(q.dtype)), config.num_warps,
                      config.num_stages)


def fwd_config(q, k, v, out, lse, patch_nums, row_bits, softmax_scale) -> tuning.FwdConfig:
    """The forward config for these inputs (autotuned on their first call, with these tensors)."""
    return tuning.choose("fwd", current_options().triton_fwd, (patch_nums, row_bits, q.shape[-1], q.dtype, q.device),
                         lambda c: fwd_call(c, q, k, v, out, lse, patch_nums, row_bits, softmax_scale).run())


def forward(q, k, v, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float):
    """q, k, v: (B, H, L, D) → out (B, H, L, D) in q's dtype, lse (B, H, L) fp32 natural-log units."""
    q, k, v = (tma_ready(t) for t in (q, k, v))
    B, H, L, D = q.shape
    out = new_output((B, H, L, D), q.dtype, q.device)
    lse = new_output((B, H, L), torch.float32, q.device)
    if q.numel() == 0:
        return out, lse
    config = fwd_config(q, k, v, out, lse, patch_nums, row_bits, softmax_scale)
    fwd_call(config, q, k, v, out, lse, patch_nums, row_bits, softmax_scale).run()
    return out, lse


def preprocess_call(out, dout, delta) -> KernelCall:
    """delta = rowsum(out · dout), (B, H, L) fp32."""
    B, H, L, D = out.shape
    return KernelCall(_preprocess, (math.ceil(L / PREPROCESS_BLOCK), B * H, 1),
                      [out, dout, delta, *out.stride()[:3], *dout.stride()[:3], H, L], None, (D, PREPROCESS_BLOCK),
                      4, 3)


def bwd_call(config: tuning.BwdConfig, dout, q, k, v, lse, delta, dq, dk, dv, patch_nums, row_bits,
             softmax_scale) -> KernelCall:
    B, H, L, D = q.shape
    bm, bn = config.block_m, config.block_n
    tables = _bwd_tables(patch_nums, row_bits, bm, bn, B * H, q.device)
    return KernelCall(_bwd, (tables.programs, 1, 1),
                      [descriptor(q, bm), descriptor(dout, bm), descriptor(k, bn), descriptor(v, bn), dq, dk, dv, lse,
                       delta, H, L, softmax_scale, softmax_scale * LOG2E],
                      tables, (D, bm, bn, _dot_precision(q.dtype)), config.num_warps, config.num_stages)


def bwd_config(dout, q, k, v, lse, delta, dq, dk, dv, patch_nums, row_bits, softmax_scale) -> tuning.BwdConfig:
    """The backward config for these inputs (autotuned on their first call, with these tensors)."""
    return tuning.choose("bwd", current_options().triton_bwd, (patch_nums, row_bits, q.shape[-1], q.dtype, q.device),
                         lambda c: bwd_call(c, dout, q, k, v, lse, delta, dq, dk, dv, patch_nums, row_bits,
                                            softmax_scale).run())


def backward(dout, q, k, v, out, lse, patch_nums: tuple[int, ...], row_bits: tuple[int, ...],
             softmax_scale: float):
    """Gradients (dq, dk, dv) of ``forward``'s out, each (B, H, L, D) in its input's dtype."""
    dout, q, k, v = (tma_ready(t) for t in (dout, q, k, v))
    out = out if out.stride(-1) == 1 else out.contiguous()
    B, H, L, D = q.shape
    delta = new_output((B, H, L), torch.float32, q.device)
    dq = new_output((B, H, L, D), q.dtype, q.device)
    dk = new_output((B, H, L, D), k.dtype, q.device)
    dv = new_output((B, H, L, D), v.dtype, q.device)
    if q.numel() == 0:
        return dq, dk, dv
    preprocess_call(out, dout, delta).run()
    config = bwd_config(dout, q, k, v, lse, delta, dq, dk, dv, patch_nums, row_bits, softmax_scale)
    bwd_call(config, dout, q, k, v, lse, delta, dq, dk, dv, patch_nums, row_bits, softmax_scale).run()
    return dq, dk, dv
