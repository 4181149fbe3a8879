"""Triton backward kernels of block-sparse multi-scale attention (conventions: see fwd.py).

Two launches:
1. ``bwd_preprocess_kernel``: delta = rowsum(dO ∘ O), fp32 (B, H, L).
2. ``attn_bwd_kernel``: every program reads (kind, tile, batch·head) from a program table ordered heaviest first.
   kind 0 computes dK, dV of one key tile, walking the query tiles that see it (a TileMask of the transposed
   pattern: its rows are keys); kind 1 computes dQ of one query tile, walking its key tiles (the forward's
   TileMask). No atomics: results are deterministic.

With P = exp2(s2 - lse·log2 e), dP = dO·Vᵀ and dS = P ∘ (dP - delta):
dV = Pᵀ·dO, dK = softmax_scale · dSᵀ·Q, dQ = softmax_scale · dS·K.
"""
import triton
import triton.language as tl

from .fwd import LOG2E, store_rows, visible_columns


@triton.jit
def bwd_preprocess_kernel(Out, DO, Delta,
                          stride_ob, stride_oh, stride_ol,
                          stride_db, stride_dh, stride_dl,
                          H, L, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """Delta[b, h, l] = Σ_d Out·dO over one block of rows; grid (cdiv(L, BLOCK), B·H)."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs[:, None] < L
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs[:, None] * stride_ol + offs_d[None, :], mask=rows)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs[:, None] * stride_dl + offs_d[None, :], mask=rows)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(Delta + (b * H + h) * L + offs, delta, mask=offs < L)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, offs_n, row_lo, row_hi, desc_q, desc_do, b, h, lse_base, delta_base, col_start,
                col_end, first, last, L, qk_scale,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dK, dV (BLOCK_N, D) of the key tile at rows offs_n over its query tiles first..last (row_lo,
    row_hi: the query range each key is seen by)."""
    for i in range(first, last):
        start_m = tl.load(col_start + i)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)  # rows past L arrive as zeros
        do = desc_do.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        if MASKED:
            row_in = offs_m < L
            lse2 = tl.load(lse_base + offs_m, mask=row_in, other=float("inf")) * LOG2E
            delta = tl.load(delta_base + offs_m, mask=row_in, other=0.0)
        else:  # a full tile lies inside [0, L)
            lse2 = tl.load(lse_base + offs_m) * LOG2E
            delta = tl.load(delta_base + offs_m)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(s_t - lse2[None, :])
        if MASKED:
            p_t = tl.where(visible_columns(offs_n, offs_m, row_lo, row_hi, col_end + i, L), p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dq_tiles(dq, q, do, offs_m, row_lo, row_hi, lse2, delta, desc_k, desc_v, b, h, col_start, col_end, first,
              last, L, qk_scale,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dQ (BLOCK_M, D) of one query tile over its key tiles first..last."""
    for i in range(first, last):
        start_n = tl.load(col_start + i)
        k = desc_k.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        v = desc_v.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            visible = visible_columns(offs_m, start_n + tl.arange(0, BLOCK_N), row_lo, row_hi, col_end + i, L)
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def attn_bwd_kernel(desc_q, desc_do, desc_k, desc_v, DQ, DK, DV, Lse, Delta, H, L, softmax_scale, qk_scale,
                    k_lo, k_hi, k_start, k_end, k_offsets, k_num_full, k_col_start, k_col_end,
                    q_lo, q_hi, q_start, q_end, q_offsets, q_num_full, q_col_start, q_col_end, programs,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """k_*: TileMask of the transposed pattern (rows = keys, BLOCK_N; columns = queries, BLOCK_M), for dK/dV;
    q_*: the forward's TileMask (rows = queries, BLOCK_M; columns = keys, BLOCK_N), for dQ. desc_q/do have
    BLOCK_M rows, desc_k/v BLOCK_N; DQ, DK, DV: contiguous (B, H, L, HEAD_DIM)."""
    pid = tl.program_id(0)
    code = tl.load(programs + 2 * pid)
    bh = tl.load(programs + 2 * pid + 1)
    kind = code >> 24
    tile = code & 0xFFFFFF
    b = bh // H
    h = bh % H
    plane = bh.to(tl.int64) * L
    lse_base = Lse + plane
    delta_base = Delta + plane

    if kind == 0:
        start_n = tl.load(k_start + tile)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = desc_k.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        v = desc_v.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        first = tl.load(k_offsets + tile)
        split = first + tl.load(k_num_full + tile)
        last = tl.load(k_offsets + tile + 1)
        dk, dv = _dkdv_tiles(dk, dv, k, v, offs_n, k_lo, k_hi, desc_q, desc_do, b, h, lse_base, delta_base,
                             k_col_start, k_col_end, first, split, L, qk_scale, BLOCK_M, HEAD_DIM, False, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, offs_n, k_lo, k_hi, desc_q, desc_do, b, h, lse_base, delta_base,
                             k_col_start, k_col_end, split, last, L, qk_scale, BLOCK_M, HEAD_DIM, True, DOT_PRECISION)
        end_n = tl.load(k_end + tile)
        store_rows(DK + plane * HEAD_DIM, (dk * softmax_scale).to(k.dtype), offs_n, end_n, HEAD_DIM)
        store_rows(DV + plane * HEAD_DIM, dv.to(v.dtype), offs_n, end_n, HEAD_DIM)
    else:
        start_m = tl.load(q_start + tile)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_in = offs_m < L
        q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        do = desc_do.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        lse2 = tl.load(lse_base + offs_m, mask=row_in, other=float("inf")) * LOG2E
        delta = tl.load(delta_base + offs_m, mask=row_in, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        first = tl.load(q_offsets + tile)
        split = first + tl.load(q_num_full + tile)
        last = tl.load(q_offsets + tile + 1)
        dq = _dq_tiles(dq, q, do, offs_m, q_lo, q_hi, lse2, delta, desc_k, desc_v, b, h, q_col_start, q_col_end,
                       first, split, L, qk_scale, BLOCK_N, HEAD_DIM, False, DOT_PRECISION)
        dq = _dq_tiles(dq, q, do, offs_m, q_lo, q_hi, lse2, delta, desc_k, desc_v, b, h, q_col_start, q_col_end,
                       split, last, L, qk_scale, BLOCK_N, HEAD_DIM, True, DOT_PRECISION)
        end_m = tl.load(q_end + tile)
        store_rows(DQ + plane * HEAD_DIM, (dq * softmax_scale).to(q.dtype), offs_m, end_m, HEAD_DIM)
