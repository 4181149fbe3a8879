"""Triton backward kernels of block-sparse multi-scale attention (conventions: see fwd.py).

Two launches:
1. ``bwd_preprocess_kernel``: delta = rowsum(dO ∘ O), fp32 (B, H, L).
2. ``attn_bwd_kernel``: every program reads (kind, tile, batch·head) from a program table ordered heaviest first.
   kind 0 computes dK, dV of one KV tile, walking the Q tiles that see it (transposed TileMask lists);
   kind 1 computes dQ of one Q tile, walking its KV tiles. No atomics: results are deterministic.

With P = exp2(s2 - lse·log2 e), dP = dO·Vᵀ and dS = P ∘ (dP - delta):
dV = Pᵀ·dO, dK = softmax_scale · dSᵀ·Q, dQ = softmax_scale · dS·K.
"""
import triton
import triton.language as tl

from .fwd import LOG2E, OUT_OF_RANGE_LEVEL


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
def _dkdv_tiles(dk, dv, k, v, k_level, desc_q, desc_do, b, h, lse_base, delta_base, level, row_bits, q_indices,
                first, last, L, qk_scale,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dK, dV (BLOCK_N, D) of one KV tile over Q tiles q_indices[first:last]."""
    for i in range(first, last):
        start_m = tl.multiple_of(tl.load(q_indices + i) * BLOCK_M, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)  # rows past L arrive as zeros
        do = desc_do.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        if MASKED:
            row_in = offs_m < L
            lse2 = tl.load(lse_base + offs_m, mask=row_in, other=float("inf")) * LOG2E
            delta = tl.load(delta_base + offs_m, mask=row_in, other=0.0)
        else:
            lse2 = tl.load(lse_base + offs_m) * LOG2E
            delta = tl.load(delta_base + offs_m)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(s_t - lse2[None, :])
        if MASKED:
            q_level = tl.load(level + offs_m, mask=row_in, other=0)
            q_bits = tl.load(row_bits + q_level, mask=row_in, other=0)
            visible = ((q_bits[None, :] >> k_level[:, None]) & 1) != 0
            p_t = tl.where(visible, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dq_tiles(dq, q, do, q_bits, lse2, delta, desc_k, desc_v, b, h, level, kv_indices, first, last, L, qk_scale,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dQ (BLOCK_M, D) of one Q tile over KV tiles kv_indices[first:last]."""
    for i in range(first, last):
        start_n = tl.multiple_of(tl.load(kv_indices + i) * BLOCK_N, BLOCK_N)
        k = desc_k.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        v = desc_v.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_level = tl.load(level + offs_n, mask=offs_n < L, other=OUT_OF_RANGE_LEVEL)
            visible = ((q_bits[:, None] >> k_level[None, :]) & 1) != 0
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def attn_bwd_kernel(desc_q, desc_do, desc_k, desc_v, desc_dq, desc_dk, desc_dv, Lse, Delta,
                    level, row_bits,
                    q_offsets, q_num_full, q_indices,
                    kv_offsets, kv_num_full, kv_indices,
                    programs, H, L, softmax_scale, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) TileMask drives both kinds of program: dK/dV of a KV tile walks its q_* lists
    (KV tile → Q tiles), dQ of a Q tile its kv_* lists. desc_q/do/dq have BLOCK_M rows, desc_k/v/dk/dv BLOCK_N."""
    pid = tl.program_id(0)
    code = tl.load(programs + 2 * pid)
    bh = tl.load(programs + 2 * pid + 1)
    kind = code >> 24
    tile = code & 0xFFFFFF
    b = bh // H
    h = bh % H
    lse_base = Lse + bh.to(tl.int64) * L
    delta_base = Delta + bh.to(tl.int64) * L

    if kind == 0:
        start_n = tile * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = desc_k.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        v = desc_v.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        k_level = tl.load(level + offs_n, mask=offs_n < L, other=OUT_OF_RANGE_LEVEL)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        first = tl.load(q_offsets + tile)
        split = first + tl.load(q_num_full + tile)
        last = tl.load(q_offsets + tile + 1)
        dk, dv = _dkdv_tiles(dk, dv, k, v, k_level, desc_q, desc_do, b, h, lse_base, delta_base, level, row_bits,
                             q_indices, first, split, L, qk_scale, BLOCK_M, HEAD_DIM, False, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, k_level, desc_q, desc_do, b, h, lse_base, delta_base, level, row_bits,
                             q_indices, split, last, L, qk_scale, BLOCK_M, HEAD_DIM, True, DOT_PRECISION)
        desc_dk.store([b, h, start_n, 0], (dk * softmax_scale).to(k.dtype).reshape(1, 1, BLOCK_N, HEAD_DIM))
        desc_dv.store([b, h, start_n, 0], dv.to(v.dtype).reshape(1, 1, BLOCK_N, HEAD_DIM))
    else:
        start_m = tile * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_in = offs_m < L
        q = desc_q.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        do = desc_do.load([b, h, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        lse2 = tl.load(lse_base + offs_m, mask=row_in, other=float("inf")) * LOG2E
        delta = tl.load(delta_base + offs_m, mask=row_in, other=0.0)
        q_level = tl.load(level + offs_m, mask=row_in, other=0)
        q_bits = tl.load(row_bits + q_level, mask=row_in, other=0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        first = tl.load(kv_offsets + tile)
        split = first + tl.load(kv_num_full + tile)
        last = tl.load(kv_offsets + tile + 1)
        dq = _dq_tiles(dq, q, do, q_bits, lse2, delta, desc_k, desc_v, b, h, level, kv_indices, first, split, L,
                       qk_scale, BLOCK_N, HEAD_DIM, False, DOT_PRECISION)
        dq = _dq_tiles(dq, q, do, q_bits, lse2, delta, desc_k, desc_v, b, h, level, kv_indices, split, last, L,
                       qk_scale, BLOCK_N, HEAD_DIM, True, DOT_PRECISION)
        desc_dq.store([b, h, start_m, 0], (dq * softmax_scale).to(q.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
