// Launch template of the sm80 forward: picks the tile (tile_size_sm80.h), composes the kernel from its
// collectives, fills their parameters from FwdParams and launches one CTA per program on the given stream.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "flash_sm80.h"
#include "fwd_epilogue_sm80.hpp"
#include "fwd_kernel_sm80.h"
#include "fwd_mainloop_sm80.hpp"
#include "tile_size_sm80.h"

namespace hmar {

template <class Element, int kHeadDim>
struct FwdKernelSm80 {
    static constexpr FwdTileSm80 kTile = fwd_tile_sm80(kHeadDim);
    using Mainloop = CollectiveMainloopFwdSm80<Element, kTile.block_m, kTile.block_n, kHeadDim, kTile.warps>;
    using Epilogue = CollectiveEpilogueFwdSm80<Element, kTile.block_m, kHeadDim, Mainloop::kThreads,
                                               typename Mainloop::TiledMma, typename Mainloop::SmemLayoutQ>;
    using Kernel = FlashAttnFwdSm80<Mainloop, Epilogue>;
};

template <class Element, int kHeadDim>
void run_fwd_sm80_(FwdParams const& p, cudaStream_t stream) {
    using Traits = FwdKernelSm80<Element, kHeadDim>;
    using Kernel = typename Traits::Kernel;
    typename Kernel::Params params{
        {static_cast<Element const*>(p.q), static_cast<Element const*>(p.k), static_cast<Element const*>(p.v),
         p.q_batch_stride, p.q_head_stride, p.q_row_stride, p.k_batch_stride, p.k_head_stride, p.k_row_stride,
         p.v_batch_stride, p.v_head_stride, p.v_row_stride, p.seqlen, p.softmax_scale_log2,
         TileMaskParams{p.row_lo, p.row_hi, p.row_start, p.row_end, p.col_offsets, p.col_num_full, p.col_start,
                        p.col_end, p.seqlen}},
        {static_cast<Element*>(p.out), p.o_batch_stride, p.o_head_stride, p.o_row_stride, p.lse, p.seqlen,
         p.heads},
        PersistentTileScheduler::Params{p.programs, p.num_programs, p.heads, nullptr},
        p.softmax_scale};
    auto kernel = &fwd_kernel_sm80<Kernel>;
    constexpr int smem_size = Kernel::SharedStorageSize;
    set_smem_sm80(kernel, smem_size, ("sm80 forward (D = " + std::to_string(kHeadDim) + ")").c_str());
    if (p.num_programs > 0) { kernel<<<p.num_programs, Kernel::NumThreads, smem_size, stream>>>(params); }
}

}  // namespace hmar
