// The sm80 forward kernel: one CTA per program of the program table (a row tile of the TileMask for one batch ·
// head, heaviest first). It only wires the collectives: mainloop (fwd_mainloop_sm80.hpp) → softmax finalize →
// epilogue (fwd_epilogue_sm80.hpp). A row tile with no column tile writes O = 0 and LSE = -inf.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "mask.h"
#include "tile_scheduler.h"
#include "utils_sm80.h"

namespace hmar {

using namespace cute;

template <class Mainloop_, class Epilogue_>
struct FlashAttnFwdSm80 {
    using Mainloop = Mainloop_;
    using Epilogue = Epilogue_;
    static constexpr int NumThreads = Mainloop::kThreads;

    struct SharedStorage {
        typename Mainloop::TensorStorage mainloop;  // the epilogue reuses its Q tile for O
    };
    static constexpr int SharedStorageSize = sizeof(SharedStorage);

    struct Params {
        typename Mainloop::Params mainloop;
        typename Epilogue::Params epilogue;
        PersistentTileScheduler::Params scheduler;  // read with get() only: one CTA per program
        float softmax_scale;
    };

    CUTLASS_DEVICE void operator()(Params const& params, char* smem_buf) {
        SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);
        int const thread_idx = threadIdx.x;
        auto const work = PersistentTileScheduler::get(params.scheduler, blockIdx.x);
        RowTile const tile = row_tile(params.mainloop.mask, work.tile);

        typename Mainloop::TiledMma tiled_mma;
        Tensor tOrO = partition_fragment_C(tiled_mma, Shape<Int<Mainloop::kBlockM>, Int<Mainloop::kHeadDim>>{});
        clear(tOrO);
        typename Mainloop::Softmax softmax(params.mainloop.softmax_scale_log2);
        typename Mainloop::Mask mask(params.mainloop.mask, thread_idx);
        Mainloop{}.mma(params.mainloop, shared.mainloop, tile, work.bidh, work.bidb, thread_idx, tOrO, softmax, mask);

        float o_scale[Mainloop::Mask::kRows];
        float lse[Mainloop::Mask::kRows];
        softmax.finalize(params.softmax_scale, o_scale, lse);
        Tensor o = make_tensor(tOrO.data(), acc_rowcol(tOrO.layout()));
        Mainloop::Softmax::rescale(o, o_scale);
        Epilogue{}.store(params.epilogue, tOrO, lse, shared.mainloop.smem_q.data(), thread_idx, tile.row_start,
                         tile.row_end, work.bidh, work.bidb);
    }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::NumThreads) fwd_kernel_sm80(typename Kernel::Params const params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    extern __shared__ __align__(128) char smem[];
    Kernel{}(params, smem);
#endif
}

}  // namespace hmar
