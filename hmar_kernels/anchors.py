"""What users have today, behind our signature, for fair comparison (benchmarks and cross-checks).

* sdpa:   F.scaled_dot_product_attention with a boolean (L, L) mask (the HMAR paper's baseline).
* flex:   FlexAttention with a BlockMask, compiled once (per shape, by dynamo).
* varlen: torch.nn.attention.varlen.varlen_attn (FlashAttention-2 kernels), one sequence per (batch, scale);
          block-diagonal only; pays the (B, H, L, D) ↔ (B·L, H, D) copies a user would pay.
Masks and offsets are built once per (schedule, pattern, device) and cached.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .schedule import bits_to_matrix, dense_mask, position_levels, scale_bounds

FLEX_RECOMPILE_LIMIT = 256  # many shapes in one process: dynamo's default (8) silently falls back to eager


@functools.lru_cache(maxsize=32)
def _bool_mask(patch_nums, row_bits, device) -> torch.Tensor:
    return dense_mask(patch_nums, row_bits, device)


def sdpa_attention(q, k, v, patch_nums, row_bits, softmax_scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_bool_mask(patch_nums, row_bits, q.device),
                                          scale=softmax_scale)


@functools.lru_cache(maxsize=32)
def _block_mask(patch_nums, row_bits, device):
    from torch.nn.attention.flex_attention import create_block_mask

    level = torch.from_numpy(position_levels(patch_nums)).to(device)
    allowed = torch.from_numpy(bits_to_matrix(row_bits)).to(device)

    def scale_mask(b, h, q_idx, kv_idx):
        return allowed[level[q_idx], level[kv_idx]]

    length = level.numel()
    return create_block_mask(scale_mask, None, None, length, length, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), FLEX_RECOMPILE_LIMIT))
    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q, k, v, patch_nums, row_bits, softmax_scale):
    return _compiled_flex()(q, k, v, block_mask=_block_mask(patch_nums, row_bits, q.device), scale=softmax_scale)


@functools.lru_cache(maxsize=32)
def _cu_seqlens(patch_nums, batch, device) -> torch.Tensor:
    _, sizes, length = scale_bounds(patch_nums)
    ends = [b * length + e for b in range(batch) for e in torch.tensor(sizes).cumsum(0).tolist()]
    return torch.tensor([0] + ends, dtype=torch.int32, device=device)


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
