// Plain parameters of the backward pass: pointers, int64 strides, sizes, the two tile tables. No torch, no
// CUTLASS: a binding fills it, the launch templates (bwd_launch.h) read it.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace hmar {

// One TileMask of hmar_kernels.schedule (its kernel_tensors(), in KERNEL_FIELDS order) and the program table of
// launch_order over its row tiles. See FwdParams for the meaning of each table.
struct BwdTables {
    int const* row_lo;        // (L,)
    int const* row_hi;        // (L,)
    int const* row_start;     // (T,)
    int const* row_end;       // (T,)
    int const* col_offsets;   // (T+1,)
    int const* col_num_full;  // (T,)
    int const* col_start;     // (nnz,)
    int const* col_end;       // (nnz,)
    int const* programs;      // (num_programs, 2): (row tile, batch·head), heaviest first
    int num_programs;
};

struct BwdParams {
    // Inputs (B, H, L, D), unit stride on D, other strides in elements and multiples of 8 (16 bytes, for TMA);
    // base pointers 16-byte aligned. out: the forward's O; dout: dL/dO.
    void const* q;
    void const* k;
    void const* v;
    void const* out;
    void const* dout;
    int64_t q_batch_stride, q_head_stride, q_row_stride;
    int64_t k_batch_stride, k_head_stride, k_row_stride;
    int64_t v_batch_stride, v_head_stride, v_row_stride;
    int64_t o_batch_stride, o_head_stride, o_row_stride;
    int64_t do_batch_stride, do_head_stride, do_row_stride;
    float const* lse;  // (B, H, L) fp32 contiguous, natural log, -inf where a row sees no key (the forward's)

    // Outputs (B, H, L, D), unit stride on D, other strides multiples of 4 (8-byte stores of dQ).
    void* dq;
    void* dk;
    void* dv;
    int64_t dq_batch_stride, dq_head_stride, dq_row_stride;
    int64_t dk_batch_stride, dk_head_stride, dk_row_stride;
    int64_t dv_batch_stride, dv_head_stride, dv_row_stride;

    // Workspace, fp32 contiguous, written by the launch (no need to clear them):
    float* delta;     // (B, H, L): rowsum(dO ∘ O)
    float* lse_log2;  // (B, H, L): lse · log2(e), +inf where lse = -inf (such a row's P is 0 everywhere)
    float* dq_accum;  // B·H·(L + block_cols)·D floats: dQ / softmax_scale accumulated by atomics (layout: the
                      // mainloop's kDQAccumSplits); unused (may be null) by the deterministic config

    int batch, heads, seqlen, head_dim;
    bool is_bf16;
    float softmax_scale;       // multiplies q·k
    float softmax_scale_log2;  // softmax_scale · log2(e)

    // dK/dV kernel: TileMask of the transposed pattern (rows = keys, columns = queries), built with
    // bwd_tile_sm90's (block_m = rows, block_n = cols): tile_mask(patch_nums, transpose_bits(bits), rows, cols).
    BwdTables kv;
    // Separate dQ pass (deterministic config): the forward pattern's TileMask with the same (rows, cols): rows are
    // queries.
    BwdTables q_tables;
    // Paired configs: one program table over both TileMasks, launch_order([kv visits · 4, q_tables visits · 3])
    // (kind 0: a dK/dV key tile, kind 1: a dQ query tile; the weights are their GEMM counts per visit).
    int const* pair_programs;
    int num_pair_programs;
    // Index into bwd_tile_sm90's table (bwd_tile_size.h): the dQ strategy. Atomic configs: dQ by fp32 atomics
    // from the dK/dV kernel + a conversion pass; the SeparatePass config: a separate dQ pass walking query tiles,
    // no atomics, bit-identical results run to run.
    int config;
};

// Defined, one per (dtype, head dim, config), in instantiations/bwd_*.cu.
template <class Element, int kHeadDim, int kConfig>
void run_bwd_sm90(BwdParams const& params, cudaStream_t stream);

// The dispatcher (bwd_dispatch.cpp): (is_bf16, head_dim, config) → run_bwd_sm90<...>. Throws
// std::invalid_argument for a combination that was not built.
void run_bwd(BwdParams const& params, cudaStream_t stream);

// What the binding needs of a config: (rows, cols) of its tiles (the TileMasks of BwdParams must be built with
// them), whether it is deterministic, whether it needs dq_accum (of B·H·(L + block_cols)·D floats).
struct BwdConfigInfo {
    int block_rows;
    int block_cols;
    bool deterministic;
    bool needs_dq_accum;
    bool paired;  // reads pair_programs
};
BwdConfigInfo bwd_config_info(int head_dim, int config);  // throws std::invalid_argument for an unknown config

}  // namespace hmar
