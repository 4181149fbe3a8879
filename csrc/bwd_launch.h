// Launch template of the sm90a backward: composes the kernels from their collectives, builds the TMA descriptors
// and launches, on one stream (the config's dQ mode, bwd_tile_size.h, picks the sequence):
//   atomic dQ:      preprocess (delta, lse_log2) → clear dq_accum → dK/dV kernel with atomic dQ → postprocess
//   separate pass:  preprocess → dK/dV kernel → dQ pass (query tiles walking their key tiles, no atomics), or
//                   both kinds of program in one launch (paired configs)
// Includes only CUDA and CUTLASS/CuTe.
#pragma once

#include <type_traits>

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

// The collectives of one kind of program for a (dtype, head dim, config).
template <class Element, int kHeadDim, int kConfig, BwdKernelKind kKind>
struct BwdPassSm90 {
    static constexpr BwdTileSm90 kTile = bwd_tile_sm90(kHeadDim, kConfig);
    using TileShape = Shape<Int<kTile.block_rows>, Int<kTile.block_cols>, Int<kHeadDim>>;
    using Mainloop = CollectiveMainloopBwdSm90<kTile.stages, TileShape, Element, kKind, kTile.overlap_acc>;
    using Epilogue = CollectiveEpilogueBwd<typename Mainloop::TileShapeAcc, Element, typename Mainloop::TiledMmaAcc,
                                           Mainloop::kHasAcc2>;
    using Pass = BwdPass<Mainloop, Epilogue>;
};

// Device parameters of one kind of program. Rows: (a1, a2) = (K, V) or, for the dQ pass, (Q, dO); columns:
// (b1, b2) = (Q, dO) or (K, V).
template <class Element, int kHeadDim, int kConfig, BwdKernelKind kKind>
typename BwdPassSm90<Element, kHeadDim, kConfig, kKind>::Pass::Params pass_params(BwdParams const& p,
                                                                                   BwdTables const& tables) {
    using Traits = BwdPassSm90<Element, kHeadDim, kConfig, kKind>;
    using Mainloop = typename Traits::Mainloop;
    using Epilogue = typename Traits::Epilogue;
    constexpr bool kDQPass = kKind == BwdKernelKind::DQ;
    auto const shape = make_shape(p.seqlen, p.head_dim, p.heads, p.batch);  // (L, D, H, B)
    auto const stride_q = make_stride(p.q_row_stride, _1{}, p.q_head_stride, p.q_batch_stride);
    auto const stride_k = make_stride(p.k_row_stride, _1{}, p.k_head_stride, p.k_batch_stride);
    auto const stride_v = make_stride(p.v_row_stride, _1{}, p.v_head_stride, p.v_batch_stride);
    auto const stride_do = make_stride(p.do_row_stride, _1{}, p.do_head_stride, p.do_batch_stride);
    auto const stride_dq = make_stride(p.dq_row_stride, _1{}, p.dq_head_stride, p.dq_batch_stride);
    auto const stride_dk = make_stride(p.dk_row_stride, _1{}, p.dk_head_stride, p.dk_batch_stride);
    auto const stride_dv = make_stride(p.dv_row_stride, _1{}, p.dv_head_stride, p.dv_batch_stride);
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
        kDQPass ? typename Epilogue::Arguments{static_cast<Element*>(p.dq), nullptr, shape, stride_dq, stride_dq,
                                               p.softmax_scale}
                : typename Epilogue::Arguments{static_cast<Element*>(p.dk), static_cast<Element*>(p.dv), shape,
                                               stride_dk, stride_dv, p.softmax_scale};
    return {Mainloop::to_underlying_arguments(mainloop_args), Epilogue::to_underlying_arguments(epilogue_args)};
}

// One launch over a program table: every program of kind kKind0, or (kPaired) kinds kKind0 and kKind1 mixed.
template <class Element, int kHeadDim, int kConfig, BwdKernelKind kKind0, BwdKernelKind kKind1, bool kPaired>
void launch_bwd_kernel(BwdParams const& p, BwdTables const& tables0, BwdTables const& tables1,
                       int const* programs, int num_programs, cudaStream_t stream) {
    using Pass0 = typename BwdPassSm90<Element, kHeadDim, kConfig, kKind0>::Pass;
    using Pass1 = typename BwdPassSm90<Element, kHeadDim, kConfig, kKind1>::Pass;
    using Kernel = FlashAttnBwdSm90<Pass0, std::conditional_t<kPaired, Pass1, void>>;
    if (num_programs == 0) { return; }
    auto const params0 = pass_params<Element, kHeadDim, kConfig, kKind0>(p, tables0);
    typename Kernel::Params params{params0, {}, PersistentTileScheduler::Params{programs, num_programs, p.heads,
                                                                              nullptr}};
    if constexpr (kPaired) {
        params.pass1 = pass_params<Element, kHeadDim, kConfig, kKind1>(p, tables1);
    } else {
        params.pass1 = params0;
    }
    auto kernel = &bwd_kernel_sm90<Kernel>;
    constexpr int smem_size = Kernel::SharedStorageSize;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_size);
    kernel<<<num_programs, Kernel::NumThreads, smem_size, stream>>>(params);
}

template <class Element, int kHeadDim, int kConfig>
void run_bwd_sm90(BwdParams const& p, cudaStream_t stream) {
    constexpr BwdTileSm90 kTile = bwd_tile_sm90(kHeadDim, kConfig);
    constexpr BwdKernelKind DKdV = BwdKernelKind::DKdV, DQ = BwdKernelKind::DQ;
    run_bwd_preprocess<Element, kHeadDim>(p, stream);
    if constexpr (kTile.dq_mode == BwdDQMode::SeparatePass && kTile.paired) {
        launch_bwd_kernel<Element, kHeadDim, kConfig, DKdV, DQ, true>(p, p.kv, p.q_tables, p.pair_programs,
                                                                      p.num_pair_programs, stream);
    } else if constexpr (kTile.dq_mode == BwdDQMode::SeparatePass) {
        launch_bwd_kernel<Element, kHeadDim, kConfig, DKdV, DKdV, false>(p, p.kv, p.kv, p.kv.programs,
                                                                         p.kv.num_programs, stream);
        launch_bwd_kernel<Element, kHeadDim, kConfig, DQ, DQ, false>(p, p.q_tables, p.q_tables, p.q_tables.programs,
                                                                     p.q_tables.num_programs, stream);
    } else {
        constexpr BwdKernelKind kKind = kTile.dq_mode == BwdDQMode::AtomicSplit ? BwdKernelKind::DKdVAtomicDQSplit
                                        : kTile.dq_mode == BwdDQMode::BulkSplit ? BwdKernelKind::DKdVBulkDQSplit
                                                                                : BwdKernelKind::DKdVAtomicDQ;
        using Mainloop = typename BwdPassSm90<Element, kHeadDim, kConfig, kKind>::Mainloop;
        size_t const accum_rows = size_t(p.seqlen) + Mainloop::kBlockN;
        cudaMemsetAsync(p.dq_accum, 0, sizeof(float) * size_t(p.batch) * p.heads * accum_rows * kHeadDim, stream);
        launch_bwd_kernel<Element, kHeadDim, kConfig, kKind, kKind, false>(p, p.kv, p.kv, p.kv.programs,
                                                                           p.kv.num_programs, stream);
        run_bwd_postprocess<Element, kHeadDim, Mainloop::kDQAccumSplits, Mainloop::kBlockN>(p, stream);
    }
}

}  // namespace hmar
