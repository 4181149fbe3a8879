"""Triton forward kernel of block-sparse multi-scale attention.

Conventions shared with bwd.py:
* Scores are kept in base 2: ``s2 = (q·k) · qk_scale`` with ``qk_scale = softmax_scale · log2(e)``, so the
  softmax uses exp2. The scale is folded in once, into the score, never into Q or K.
* The saved LSE is in natural-log units (as FlashAttention's): ``lse = (m2 + log2(l)) · ln 2``, fp32, (B, H, L).
* Q, K, V are read through rank-4 TMA tensor descriptors over (B, H, L, D) with any strides, at any row offset:
  rows past L load as zeros. Outputs are fresh contiguous tensors, written with plain masked stores, because a
  tile owns only some of the rows it computes (``schedule.TileMask``).
* A program owns one (row tile, batch·head) pair, read from a program table ordered heaviest first. It walks the
  column tiles the TileMask lists for its row tile: full tiles with no mask, then partial tiles where column c is
  visible to row r iff ``row_lo[r] <= c < min(row_hi[r], col_end)``.
* Masked scores are -inf; rows that have seen no key yet use 0 as their running max so exp2 stays finite.
"""
import triton
import triton.language as tl

# Globals read inside @triton.jit functions must be constexpr (Triton 3.6 rejects plain module globals).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def visible_columns(offs_r, offs_c, row_lo, row_hi, col_end_ptr, L):
    """(rows, columns) bool of a partial tile: row_lo[r] <= c < min(row_hi[r], col_end). The row bounds are
    loaded here, not kept in registers across the loop: partial tiles are few."""
    row_in = offs_r < L
    lo = tl.load(row_lo + offs_r, mask=row_in, other=0)
    hi = tl.minimum(tl.load(row_hi + offs_r, mask=row_in, other=0), tl.load(col_end_ptr))
    return (offs_c[None, :] >= lo[:, None]) & (offs_c[None, :] < hi[:, None])


@triton.jit
def store_rows(ptr, values, offs_r, end, HEAD_DIM: tl.constexpr):
    """Store rows offs_r < end of a (rows, HEAD_DIM) tile into a contiguous (..., HEAD_DIM) tensor at ptr."""
    offs_d = tl.arange(0, HEAD_DIM)
    tl.store(ptr + offs_r[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :], values, mask=offs_r[:, None] < end)


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, offs_m, row_lo, row_hi, desc_k, desc_v, b, h, col_start, col_end, first, last,
               L, qk_scale,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) over the column tiles first..last of the TileMask lists."""
    for i in range(first, last):
        start_n = tl.load(col_start + i)
        k = desc_k.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)  # rows past L arrive as zeros
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N), unscaled
        if MASKED:
            visible = visible_columns(offs_m, start_n + tl.arange(0, BLOCK_N), row_lo, row_hi, col_end + i, L)
            qk = tl.where(visible, qk, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = tl.where(m_new == -float("inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
        # qk_scale > 0, so max(qk)·qk_scale is the max of the scaled scores, and the scaling folds into one FMA
        # per score here instead of a multiply of the whole tile before the max (explicit: Triton may stop
        # fusing mul + add by default).
        p = tl.math.exp2(tl.fma(qk, qk_scale, -m_use[:, None]))
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = desc_v.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd_kernel(desc_q, desc_k, desc_v, Out, Lse, H, L, qk_scale,
                    row_lo, row_hi, row_start, row_end, col_offsets, col_num_full, col_start, col_end, programs,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """desc_*: rank-4 TMA descriptors over (B, H, L, HEAD_DIM) tensors, blocks (1, 1, BLOCK_*, HEAD_DIM);
    Out: (B, H, L, HEAD_DIM) contiguous; Lse: (B, H, L) fp32 contiguous; the rest: TileMask tensors."""
    pid = tl.program_id(0)
    tile = tl.load(programs + 2 * pid)
    bh = tl.load(programs + 2 * pid + 1)
    b = bh // H
    h = bh % H

    start_m = tl.load(row_start + tile)
    end_m = tl.load(row_end + tile)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    first = tl.load(col_offsets + tile)
    split = first + tl.load(col_num_full + tile)
    last = tl.load(col_offsets + tile + 1)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, offs_m, row_lo, row_hi, desc_k, desc_v, b, h, col_start, col_end,
                               first, split, L, qk_scale, BLOCK_N, HEAD_DIM, False, DOT_PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, offs_m, row_lo, row_hi, desc_k, desc_v, b, h, col_start, col_end,
                               split, last, L, qk_scale, BLOCK_N, HEAD_DIM, True, DOT_PRECISION)

    # A row with no visible key keeps l = 0: it stores O = 0 and LSE = -inf.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = (m_i + tl.math.log2(l_safe)) * LN2
    plane = bh.to(tl.int64) * L
    store_rows(Out + plane * HEAD_DIM, out.to(q.dtype), offs_m, end_m, HEAD_DIM)
    tl.store(Lse + plane + offs_m, lse, mask=offs_m < end_m)
