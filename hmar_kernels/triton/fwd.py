"""Triton forward kernel of block-sparse multi-scale attention.

Conventions shared with bwd.py:
* Scores are kept in base 2: ``s2 = (q·k) · qk_scale`` with ``qk_scale = softmax_scale · log2(e)``, so the
  softmax uses exp2. The scale is folded in once, into the score, never into Q or K.
* The saved LSE is in natural-log units (as FlashAttention's): ``lse = (m2 + log2(l)) · ln 2``, fp32, (B, H, L).
* Q, K, V, O move through rank-4 TMA tensor descriptors over (B, H, L, D) with any strides: rows past L load as
  zeros and are dropped on store, so loads need no masks and no per-element address registers.
* A program owns one (Q tile, batch·head) pair, read from a program table ordered heaviest first. It walks the
  KV tiles listed for its Q tile by the TileMask: full tiles with no mask, then partial tiles with the
  per-element mask ``row_bits[level[q]] >> level[k] & 1`` (out-of-range positions have level 31, never allowed).
* Masked scores are -inf; rows that have seen no key yet use 0 as their running max so exp2 stays finite.
"""
import triton
import triton.language as tl

# Globals read inside @triton.jit functions must be constexpr (Triton 3.6 rejects plain module globals).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
OUT_OF_RANGE_LEVEL = tl.constexpr(31)


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, q_bits, desc_k, desc_v, b, h, kv_indices, first, last, level, L, qk_scale,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) over KV tiles kv_indices[first:last]."""
    for i in range(first, last):
        start_n = tl.multiple_of(tl.load(kv_indices + i) * BLOCK_N, BLOCK_N)
        k = desc_k.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)  # rows past L arrive as zeros
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_level = tl.load(level + offs_n, mask=offs_n < L, other=OUT_OF_RANGE_LEVEL)
            visible = ((q_bits[:, None] >> k_level[None, :]) & 1) != 0
            s = tl.where(visible, s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == -float("inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = desc_v.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd_kernel(desc_q, desc_k, desc_v, desc_o, Lse,
                    level, row_bits, kv_offsets, kv_num_full, kv_indices, programs,
                    H, L, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """desc_*: rank-4 TMA descriptors over (B, H, L, HEAD_DIM) tensors, blocks (1, 1, BLOCK_*, HEAD_DIM);
    Lse: (B, H, L) fp32 contiguous."""
    pid = tl.program_id(0)
    tile = tl.load(programs + 2 * pid)
    bh = tl.load(programs + 2 * pid + 1)
    b = bh // H
    h = bh % H

    start_m = tile * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_in = offs_m < L
    q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
    q_level = tl.load(level + offs_m, mask=row_in, other=0)
    q_bits = tl.load(row_bits + q_level, mask=row_in, other=0)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    first = tl.load(kv_offsets + tile)
    split = first + tl.load(kv_num_full + tile)
    last = tl.load(kv_offsets + tile + 1)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, q_bits, desc_k, desc_v, b, h, kv_indices, first, split, level, L,
                               qk_scale, BLOCK_N, HEAD_DIM, False, DOT_PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, q_bits, desc_k, desc_v, b, h, kv_indices, split, last, level, L,
                               qk_scale, BLOCK_N, HEAD_DIM, True, DOT_PRECISION)

    # A row with no visible key (only padding rows) keeps l = 0: it stores O = 0 and LSE = -inf.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = (m_i + tl.math.log2(l_safe)) * LN2
    desc_o.store([b, h, start_m, 0], out.to(q.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))  # rows past L dropped
    tl.store(Lse + bh.to(tl.int64) * L + offs_m, lse, mask=row_in)
