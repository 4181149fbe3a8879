// Plain parameters of the forward pass: pointers, int64 strides, sizes. No torch, no CUTLASS: api.cpp fills it,
// the launch templates (fwd_launch.h) read it.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace hmar {

struct FwdParams {
    // q, k, v, out: (B, H, L, D) with unit stride on D; strides in elements, each a multiple of 8 (16 bytes, for
    // TMA). The base pointers are 16-byte aligned.
    void const* q;
    void const* k;
    void const* v;
    void* out;
    int64_t q_batch_stride, q_head_stride, q_row_stride;
    int64_t k_batch_stride, k_head_stride, k_row_stride;
    int64_t v_batch_stride, v_head_stride, v_row_stride;
    int64_t o_batch_stride, o_head_stride, o_row_stride;
    float* lse;  // (B, H, L) fp32 contiguous, natural log; -inf where a row sees no key

    int batch, heads, seqlen, head_dim;
    bool is_bf16;
    float softmax_scale;       // multiplies q·k
    float softmax_scale_log2;  // softmax_scale · log2(e): scores go through exp2

    // Tile metadata of hmar_kernels.schedule.TileMask, built with this kernel's (block_m, block_n). Row tiles are
    // cut along the schedule, not on a global grid:
    int const* row_lo;        // (L,) row r may attend keys [row_lo[r], row_hi[r]) (hull of its allowed runs)
    int const* row_hi;        // (L,)
    int const* row_start;     // (T,) row tile t computes block_m rows from row_start[t] (any integer) and
    int const* row_end;       // (T,) writes rows [row_start[t], row_end[t]) only
    int const* col_offsets;   // (T+1,) column tiles of row tile t: entries [col_offsets[t], col_offsets[t+1])
    int const* col_num_full;  // (T,) how many of them (listed first) need no element mask
    int const* col_start;     // (nnz,) column tile e covers keys [col_start[e], col_start[e] + block_n)
    int const* col_end;       // (nnz,) in a partial tile, key c is visible to row r iff
                              //        row_lo[r] <= c < min(row_hi[r], col_end[e])
    // Program table of hmar_kernels.schedule.launch_order: (num_programs, 2) rows (row tile, batch·head),
    // heaviest first. The persistent CTAs walk it (tile_scheduler.h).
    int const* programs;
    int num_programs;
    int num_ctas;  // grid size: number of SMs for a persistent grid, num_programs for one CTA per program
    int* scheduler_counter;  // 2 ints, zero (the kernel resets them): dynamic scheduling; nullptr: static stride

    int config;  // index into fwd_tile_sm90's table (tile_size.h)
};

// Defined, one per (dtype, head dim, config), in instantiations/*.cu.
template <class Element, int kHeadDim, int kConfig>
void run_fwd_sm90(FwdParams const& params, cudaStream_t stream);

// The one dispatcher (fwd_dispatch.cpp): (is_bf16, head_dim, config) → run_fwd_sm90<...>. Throws
// std::invalid_argument for a combination that was not built. C++ users call this.
void run_fwd(FwdParams const& params, cudaStream_t stream);

// What this build contains (dev builds drop some instantiations; see static_switch.h).
struct BuiltKernels {
    bool fp16;
    bool hdim128;
    bool alt_configs;
};
BuiltKernels built_kernels();

}  // namespace hmar
