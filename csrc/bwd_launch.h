// Launch template of the sm90a backward: composes the kernels from their collectives, builds the TMA descriptors
// and launches, on one stream (the config's dQ mode, bwd_tile_size.h, picks the sequence):
//   atomic dQ:      preprocess (delta, lse_log2) → clear dq_accum → dK/dV kernel with atomic dQ → postprocess
//   separate pass:  preprocess → dK/dV kernel → dQ pass (query tiles walking their key tiles, no atomics)
// Includes only CUDA and CUTLASS/CuTe.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "bwd_epilogue.hpp"
#include "bwd_kernel_sm90.h"
#include "bwd_mainloop_sm90.hpp"
#include "bwd_postprocess.h"
#include "bwd_preprocess.h"
#include "bwd_tile_size.h"
#include "flash_bwd.h"

namespace hmar {

template <class Element, int kHeadDim, int kConfig, BwdKernelKind kKind>
struct BwdKernelSm90 {
    static constexpr BwdTileSm90 kTile = bwd_tile_sm90(kHeadDim, kConfig);
    using TileShape = Shape<Int<kTile.block_rows>, Int<kTile.block_cols>, Int<kHeadDim>>;
    using Mainloop = CollectiveMainloopBwdSm90<kTile.stages, TileShape, Element, kKind, kTile.overlap_acc>;
    using Epilogue = CollectiveEpilogueBwd<typename Mainloop::TileShapeAcc, Element, typename Mainloop::TiledMmaAcc>;
    using Kernel = FlashAttnBwdSm90<Mainloop, Epilogue>;
};

// One launch of a backward kernel. Rows: (a1, a2) = (K, V) or (Q, dO); columns: (b1, b2) = (Q, dO) or (K, V).
template <class Element, int kHeadDim, int kConfig, BwdKernelKind kKind>
void launch_bwd_kernel(BwdParams const& p, BwdTables const& tables, cudaStream_t stream) {
    using Traits = BwdKernelSm90<Element, kHeadDim, kConfig, kKind>;
    constexpr bool kDQPass = kKind == BwdKernelKind::DQ;
    using Mainloop = typename Traits::Mainloop;
    using Epilogue = typename Traits::Epilogue;
    using Kernel = typename Traits::Kernel;
    if (tables.num_programs == 0) { return; }

    auto const shape = make_shape(p.seqlen, p.head_dim, p.heads, p.batch);  // (L, D, H, B)
    auto const stride_q = make_stride(p.q_row_stride, _1{}, p.q_head_stride, p.q_batch_stride);
    auto const stride_k = make_stride(p.k_row_stride, _1{}, p.k_head_stride, p.k_batch_stride);
    auto const stride_v = make_stride(p.v_row_stride, _1{}, p.v_head_stride, p.v_batch_stride);
    auto const stride_do = make_stride(p.do_row_stride, _1{}, p.do_head_stride, p.do_batch_stride);
    auto const* q = static_cast<Element const*>(p.q);
    auto const* k = static_cast<Element const*>(p.k);
    auto const* v = static_cast<Element const*>(p.v);
    auto const* dout = static_cast<Element const*>(p.dout);
    TileMaskParams const mask{tables.row_lo, tables.row_hi, tables.row_start, tables.row_end, tables.col_offsets,
                              tables.col_num_full, tables.col_start, tables.col_end, p.seqlen};
    typename Mainloop::Arguments mainloop_args =
        kDQPass ? typename Mainloop::Arguments{q, dout, k, v, shape, stride_q, stride_do, stride_k, stride_v,
                                               p.lse_log2, p.delta, nullptr, p.softmax_scale_log2, mask}
                : typename Mainloop::Arguments{k, v, q, dout, shape, stride_k, stride_v, stride_q, stride_do,
                                               p.lse_log2, p.delta, p.dq_accum, p.softmax_scale_log2, mask};
    typename Epilogue::Arguments epilogue_args =
        kDQPass ? typename Epilogue::Arguments{static_cast<Element*>(p.dq), nullptr, shape,
                                               make_stride(p.dq_row_stride, _1{}, p.dq_head_stride, p.dq_batch_stride),
                                               make_stride(p.dq_row_stride, _1{}, p.dq_head_stride, p.dq_batch_stride),
                                               p.softmax_scale}
                : typename Epilogue::Arguments{static_cast<Element*>(p.dk), static_cast<Element*>(p.dv), shape,
                                               make_stride(p.dk_row_stride, _1{}, p.dk_head_stride, p.dk_batch_stride),
                                               make_stride(p.dv_row_stride, _1{}, p.dv_head_stride, p.dv_batch_stride),
                                               p.softmax_scale};
    typename Kernel::Params params{Mainloop::to_underlying_arguments(mainloop_args),
                                   Epilogue::to_underlying_arguments(epilogue_args),
                                   PersistentTileScheduler::Params{tables.programs, tables.num_programs, p.heads,
                                                                   nullptr}};
    auto kernel = &bwd_kernel_sm90<Kernel>;
    constexpr int smem_size = Kernel::SharedStorageSize;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_size);
    kernel<<<tables.num_programs, Kernel::NumThreads, smem_size, stream>>>(params);
}

template <class Element, int kHeadDim, int kConfig>
void run_bwd_sm90(BwdParams const& p, cudaStream_t stream) {
    constexpr BwdDQMode kMode = bwd_tile_sm90(kHeadDim, kConfig).dq_mode;
    run_bwd_preprocess<Element, kHeadDim>(p, stream);
    if constexpr (kMode == BwdDQMode::SeparatePass) {
        launch_bwd_kernel<Element, kHeadDim, kConfig, BwdKernelKind::DKdV>(p, p.kv, stream);
        launch_bwd_kernel<Element, kHeadDim, kConfig, BwdKernelKind::DQ>(p, p.q_tables, stream);
    } else {
        constexpr BwdKernelKind kKind = kMode == BwdDQMode::AtomicSplit ? BwdKernelKind::DKdVAtomicDQSplit
                                        : kMode == BwdDQMode::BulkSplit ? BwdKernelKind::DKdVBulkDQSplit
                                                                        : BwdKernelKind::DKdVAtomicDQ;
        using Mainloop = typename BwdKernelSm90<Element, kHeadDim, kConfig, kKind>::Mainloop;
        size_t const accum_rows = size_t(p.seqlen) + Mainloop::kBlockN;
        cudaMemsetAsync(p.dq_accum, 0, sizeof(float) * size_t(p.batch) * p.heads * accum_rows * kHeadDim, stream);
        launch_bwd_kernel<Element, kHeadDim, kConfig, kKind>(p, p.kv, stream);
        run_bwd_postprocess<Element, kHeadDim, Mainloop::kDQAccumSplits, Mainloop::kBlockN>(p, stream);
    }
}

}  // namespace hmar
