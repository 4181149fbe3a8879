// Launch template of the sm90a forward: picks the tile (tile_size.h), composes the kernel from its collectives,
// builds the TMA descriptors of Q, K, V (O is stored without TMA) and launches on the given stream. Includes only
// CUDA and CUTLASS/CuTe.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "flash.h"
#include "fwd_epilogue.hpp"
#include "fwd_kernel_sm90.h"
#include "fwd_mainloop_sm90.hpp"
#include "tile_scheduler.h"
#include "tile_size.h"

namespace hmar {

template <class Element, int kHeadDim, int kConfig>
struct FwdKernelSm90 {
    static constexpr FwdTileSm90 kTile = fwd_tile_sm90(kHeadDim, kConfig);
    using TileShape = Shape<Int<kTile.block_m>, Int<kTile.block_n>, Int<kHeadDim>>;
    using Mainloop = CollectiveMainloopFwdSm90<kTile.stages, TileShape, Element, kTile.intra_wg_overlap,
                                               kTile.wg_pingpong>;
    using Epilogue = CollectiveEpilogueFwd<TileShape, Element, typename Mainloop::TiledMmaPV, kTile.wg_epilogue>;
    using Kernel = FlashAttnFwdSm90<Mainloop, Epilogue, PersistentTileScheduler>;
};

template <class Element, int kHeadDim, int kConfig>
void run_fwd_sm90(FwdParams const& p, cudaStream_t stream) {
    using Traits = FwdKernelSm90<Element, kHeadDim, kConfig>;
    using Mainloop = typename Traits::Mainloop;
    using Epilogue = typename Traits::Epilogue;
    using Kernel = typename Traits::Kernel;

    auto const shape = make_shape(p.seqlen, p.head_dim, p.heads, p.batch);  // (L, D, H, B)
    typename Mainloop::Arguments mainloop_args{
        static_cast<Element const*>(p.q), static_cast<Element const*>(p.k), static_cast<Element const*>(p.v),
        shape,
        make_stride(p.q_row_stride, _1{}, p.q_head_stride, p.q_batch_stride),
        make_stride(p.k_row_stride, _1{}, p.k_head_stride, p.k_batch_stride),
        make_stride(p.v_row_stride, _1{}, p.v_head_stride, p.v_batch_stride),
        p.softmax_scale_log2,
        TileMaskParams{p.row_lo, p.row_hi, p.row_start, p.row_end, p.col_offsets, p.col_num_full, p.col_start,
                       p.col_end, p.seqlen}};
    typename Epilogue::Arguments epilogue_args{
        static_cast<Element*>(p.out), shape, make_stride(p.o_row_stride, _1{}, p.o_head_stride, p.o_batch_stride),
        p.lse};
    typename Kernel::Params params{Mainloop::to_underlying_arguments(mainloop_args),
                                   Epilogue::to_underlying_arguments(epilogue_args),
                                   PersistentTileScheduler::Params{p.programs, p.num_programs, p.heads, p.scheduler_counter},
                                   p.softmax_scale};

    auto kernel = &fwd_kernel_sm90<Kernel>;
    constexpr int smem_size = Kernel::SharedStorageSize;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_size);
    int const grid = p.num_ctas < p.num_programs ? p.num_ctas : p.num_programs;
    if (grid > 0) { kernel<<<grid, Kernel::NumThreads, smem_size, stream>>>(params); }
}

}  // namespace hmar
