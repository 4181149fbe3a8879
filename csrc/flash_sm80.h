// Parameters and entry points of the sm80 kernels (mma.sync + cp.async; they run on sm80, sm86, sm89 and sm90).
// No torch, no CUTLASS. The forward reads the same FwdParams as the sm90a forward (flash.h), with its TileMask
// built with fwd_tile_sm80's (block_m, block_n); config, num_ctas and scheduler_counter are not used (one CTA
// per program of the program table).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "flash.h"

namespace hmar {

struct BwdParamsSm80 {
    // q, k, v, out, dout, dq, dk, dv: (B, H, L, D) with unit stride on D; strides in elements, multiples of 8;
    // base pointers 16-byte aligned.
    void const* q;
    void const* k;
    void const* v;
    void const* out;
    void const* dout;
    void* dq;
    void* dk;
    void* dv;
    int64_t q_batch_stride, q_head_stride, q_row_stride;
    int64_t k_batch_stride, k_head_stride, k_row_stride;
    int64_t v_batch_stride, v_head_stride, v_row_stride;
    int64_t o_batch_stride, o_head_stride, o_row_stride;
    int64_t do_batch_stride, do_head_stride, do_row_stride;
    int64_t dq_batch_stride, dq_head_stride, dq_row_stride;
    int64_t dk_batch_stride, dk_head_stride, dk_row_stride;
    int64_t dv_batch_stride, dv_head_stride, dv_row_stride;
    float const* lse;  // (B, H, L) fp32 contiguous, natural log, from the forward (-inf: the row sees no key)
    float* delta;      // workspace (B, H, L) fp32: rowsum(dO ∘ O), written by the preprocess
    float* dq_accum;   // workspace (B, H, L, D) fp32: zeroed by the preprocess, summed into by atomics

    int batch, heads, seqlen, head_dim;
    bool is_bf16;
    float softmax_scale;
    float softmax_scale_log2;

    // TileMask of the transposed pattern, built with (bwd_tile_sm80.block_n, bwd_tile_sm80.block_m): its rows are
    // keys (a CTA owns key rows [row_start, row_end)), its columns queries; see FwdParams for each field.
    int const* row_lo;
    int const* row_hi;
    int const* row_start;
    int const* row_end;
    int const* col_offsets;
    int const* col_num_full;
    int const* col_start;
    int const* col_end;
    int const* programs;  // launch_order over that mask's row tiles: (num_programs, 2) rows (tile, batch·head)
    int num_programs;
};

// Defined per (dtype, head dim) in instantiations/*_sm80.cu.
template <class Element, int kHeadDim>
void run_fwd_sm80_(FwdParams const& params, cudaStream_t stream);
template <class Element, int kHeadDim>
void run_bwd_sm80_(BwdParamsSm80 const& params, cudaStream_t stream);

// Dispatchers (fwd_dispatch_sm80.cpp, bwd_dispatch_sm80.cpp): (is_bf16, head_dim) → the instantiation; throw
// std::invalid_argument for a combination that was not built. The backward launches the preprocess (delta,
// dq_accum = 0), the main kernel and the dQ postprocess.
void run_fwd_sm80(FwdParams const& params, cudaStream_t stream);
void run_bwd_sm80(BwdParamsSm80 const& params, cudaStream_t stream);

// (block_m, block_n) the TileMasks must be built with: the forward's (rows = queries) and the backward's
// transposed one (rows = keys: block_n of bwd_tile_sm80, columns = queries: its block_m).
struct TileShapeSm80 {
    int fwd_block_m, fwd_block_n;
    int bwd_block_n, bwd_block_m;
};
TileShapeSm80 tile_shape_sm80(int head_dim);

}  // namespace hmar
