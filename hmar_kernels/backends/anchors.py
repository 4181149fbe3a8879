"""What users have today, behind our signature, for fair comparison (benchmarks and cross-checks).

* sdpa:   F.scaled_dot_product_attention with a boolean (L, L) mask (the HMAR paper's baseline).
* flex:   FlexAttention with a BlockMask, compiled once (per shape, by dynamo).
* varlen: torch.nn.attention.varlen.varlen_attn (FlashAttention-2 kernels), one sequence per (batch, scale);
          block-diagonal only; pays the (B, H, L, D) ↔ (B·L, H, D) copies a user would pay.
Masks and offsets are built once per (schedule, pattern, device), outside any CUDA graph pool (resident.py), and
cached. Under torch.compile the boolean mask and the offsets enter the graph as constants (built at trace time);
the BlockMask is built inside the graph, as FlexAttention expects, and the outer compile compiles flex itself.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..resident import host_to_device, resident
from ..tiles import dense_mask, scale_bounds

FLEX_RECOMPILE_LIMIT = 256  # many shapes in one process: dynamo's default (8) silently falls back to eager


@functools.lru_cache(maxsize=32)
def _cached_bool_mask(patch_nums, row_bits, device) -> torch.Tensor:
    return resident(lambda: dense_mask(patch_nums, row_bits, device), device)


@torch.compiler.assume_constant_result
def _bool_mask(patch_nums, row_bits, device) -> torch.Tensor:
    """(L, L) bool, cached (a constant of the graph under torch.compile)."""
    return _cached_bool_mask(patch_nums, row_bits, device)


def sdpa_attention(q, k, v, patch_nums, row_bits, softmax_scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_bool_mask(patch_nums, row_bits, q.device),
                                          scale=softmax_scale)


def _build_block_mask(patch_nums, row_bits, device):
    from torch.nn.attention.flex_attention import create_block_mask

    starts, sizes, length = scale_bounds(patch_nums)
    scale_ends = torch.tensor([a + n for a, n in zip(starts, sizes)], device=device)
    level = torch.searchsorted(scale_ends, torch.arange(length, device=device), right=True)  # (L,) scale of each
    allowed = torch.tensor([[bool(bits >> j & 1) for j in range(len(row_bits))] for bits in row_bits],
                           device=device)  # (S, S) bool; plain Python so that dynamo traces it

    def scale_mask(b, h, q_idx, kv_idx):
        return allowed[level[q_idx], level[kv_idx]]

    return create_block_mask(scale_mask, None, None, length, length, device=device)


@functools.lru_cache(maxsize=32)
def _block_mask(patch_nums, row_bits, device):
    return resident(lambda: _build_block_mask(patch_nums, row_bits, device), device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), FLEX_RECOMPILE_LIMIT))
    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q, k, v, patch_nums, row_bits, softmax_scale):
    if torch.compiler.is_compiling():
        from torch.nn.attention.flex_attention import flex_attention as traced_flex

        block_mask = _build_block_mask(patch_nums, row_bits, q.device)
        return traced_flex(q, k, v, block_mask=block_mask, scale=softmax_scale)
    return _compiled_flex()(q, k, v, block_mask=_block_mask(patch_nums, row_bits, q.device), scale=softmax_scale)


@functools.lru_cache(maxsize=32)
def _cached_cu_seqlens(patch_nums, batch, device) -> torch.Tensor:
    starts, sizes, length = scale_bounds(patch_nums)
    ends = [b * length + a + n for b in range(batch) for a, n in zip(starts, sizes)]
    return host_to_device(torch.tensor([0] + ends, dtype=torch.int32), device)


@torch.compiler.assume_constant_result
def _cu_seqlens(patch_nums, batch, device) -> torch.Tensor:
    """(B·S + 1,) int32 sequence offsets, cached (a constant of the graph under torch.compile)."""
    return _cached_cu_seqlens(patch_nums, batch, device)


def varlen_attention(q, k, v, patch_nums, row_bits, softmax_scale):
    from torch.nn.attention.varlen import varlen_attn

    B, H, L, D = q.shape
    longest = max(p * p for p in patch_nums)
    cu = _cu_seqlens(patch_nums, B, q.device)

    def packed(t):  # (B, H, L, D) → (B·L, H, D)
        return t.transpose(1, 2).reshape(B * L, H, D)

    out = varlen_attn(packed(q), packed(k), packed(v), cu, cu, longest, longest, scale=softmax_scale)
    return out.view(B, L, H, D).transpose(1, 2)


ANCHORS = {"sdpa": sdpa_attention, "flex": flex_attention, "varlen": varlen_attention}
