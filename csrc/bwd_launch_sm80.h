// Launch template of the sm80 backward: preprocess (delta, dq_accum = 0) → main kernel (one CTA per key-tile
// program) → postprocess (dQ = scale · dq_accum in the input dtype), all on the given stream.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "bwd_kernel_sm80.h"
#include "bwd_mainloop_sm80.hpp"
#include "bwd_postprocess_sm80.h"
#include "bwd_preprocess_sm80.h"
#include "flash_sm80.h"
#include "tile_size_sm80.h"

namespace hmar {

template <class Element, int kHeadDim>
struct BwdKernelSm80 {
    static constexpr BwdTileSm80 kTile = bwd_tile_sm80(kHeadDim);
    using Mainloop = CollectiveMainloopBwdSm80<Element, kTile.block_n, kTile.block_m, kHeadDim, kTile.warps>;
    using Kernel = FlashAttnBwdSm80<Mainloop>;
};

template <class Element, int kHeadDim>
void run_bwd_sm80_(BwdParamsSm80 const& p, cudaStream_t stream) {
    using Kernel = typename BwdKernelSm80<Element, kHeadDim>::Kernel;
    dim3 const rows_grid((p.seqlen + kPrePostRowsPerBlock - 1) / kPrePostRowsPerBlock, p.batch * p.heads);
    if (p.seqlen == 0 || p.batch * p.heads == 0) { return; }
    bwd_preprocess_sm80<Element, kHeadDim><<<rows_grid, 256, 0, stream>>>(p);

    typename Kernel::Params params{
        {static_cast<Element const*>(p.q), static_cast<Element const*>(p.k), static_cast<Element const*>(p.v),
         static_cast<Element const*>(p.dout), p.q_batch_stride, p.q_head_stride, p.q_row_stride, p.k_batch_stride,
         p.k_head_stride, p.k_row_stride, p.v_batch_stride, p.v_head_stride, p.v_row_stride, p.do_batch_stride,
         p.do_head_stride, p.do_row_stride, p.lse, p.delta, p.dq_accum, p.seqlen, p.heads, p.softmax_scale_log2,
         TileMaskParams{p.row_lo, p.row_hi, p.row_start, p.row_end, p.col_offsets, p.col_num_full, p.col_start,
                        p.col_end, p.seqlen}},
        static_cast<Element*>(p.dk), static_cast<Element*>(p.dv),
        p.dk_batch_stride, p.dk_head_stride, p.dk_row_stride, p.dv_batch_stride, p.dv_head_stride, p.dv_row_stride,
        PersistentTileScheduler::Params{p.programs, p.num_programs, p.heads, nullptr},
        p.softmax_scale};
    auto kernel = &bwd_kernel_sm80<Kernel>;
    constexpr int smem_size = Kernel::SharedStorageSize;
    set_smem_sm80(kernel, smem_size, ("sm80 backward (D = " + std::to_string(kHeadDim) + ")").c_str());
    if (p.num_programs > 0) { kernel<<<p.num_programs, Kernel::NumThreads, smem_size, stream>>>(params); }

    bwd_postprocess_sm80<Element, kHeadDim><<<rows_grid, 256, 0, stream>>>(p);
}

}  // namespace hmar
