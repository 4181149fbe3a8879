// The sm80 backward kernel: one CTA per program of the program table over the transposed pattern's TileMask (a
// key tile of one batch · head, heaviest first). It wires the mainloop (bwd_mainloop_sm80.hpp: dK, dV in
// registers, dQ by atomics) to the dK / dV stores of the owned key rows. A key tile no query sees writes zeros.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "mask.h"
#include "tile_scheduler.h"
#include "utils_sm80.h"

namespace hmar {

using namespace cute;

template <class Mainloop_>
struct FlashAttnBwdSm80 {
    using Mainloop = Mainloop_;
    using Element = typename Mainloop::Element;
    static constexpr int NumThreads = Mainloop::kThreads;
    static constexpr int kBlockN = Mainloop::kBlockN;
    static constexpr int kHeadDim = Mainloop::kHeadDim;

    struct SharedStorage {
        typename Mainloop::TensorStorage mainloop;  // dK, dV are staged in its K, V tiles
    };
    static constexpr int SharedStorageSize = sizeof(SharedStorage);

    struct Params {
        typename Mainloop::Params mainloop;
        Element* dk;
        Element* dv;
        int64_t dk_batch_stride, dk_head_stride, dk_row_stride;
        int64_t dv_batch_stride, dv_head_stride, dv_row_stride;
        PersistentTileScheduler::Params scheduler;  // read with get() only: one CTA per program
        float softmax_scale;
    };

    CUTLASS_DEVICE void operator()(Params const& params, char* smem_buf) {
        SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);
        int const thread_idx = threadIdx.x;
        auto const work = PersistentTileScheduler::get(params.scheduler, blockIdx.x);
        RowTile const tile = row_tile(params.mainloop.mask, work.tile);

        using TiledMma = typename Mainloop::TiledMmaSdp;
        TiledMma tiled_mma;
        Tensor tdKrdK = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kHeadDim>>{});
        Tensor tdVrdV = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kHeadDim>>{});
        clear(tdKrdK);
        clear(tdVrdV);
        typename Mainloop::Mask mask(params.mainloop.mask, thread_idx);
        Mainloop{}.mma(params.mainloop, shared.mainloop, tile, work.bidh, work.bidb, thread_idx, tdKrdK, tdVrdV,
                       mask);

        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < size(tdKrdK); ++j) { tdKrdK(j) *= params.softmax_scale; }
        Tensor sK = make_tensor(make_smem_ptr(shared.mainloop.smem_k.data()), typename Mainloop::SmemLayoutKV{});
        Tensor sV = make_tensor(make_smem_ptr(shared.mainloop.smem_v.data()), typename Mainloop::SmemLayoutKV{});
        cute::cp_async_wait<0>();
        __syncthreads();  // every thread is done with K and V (and a tile without visits has its loads landed)
        fragment_to_smem<Element, TiledMma>(tdKrdK, sK, thread_idx);
        fragment_to_smem<Element, TiledMma>(tdVrdV, sV, thread_idx);
        __syncthreads();
        int const rows_owned = tile.row_end - tile.row_start;
        int64_t const row0 = tile.row_start;
        smem_to_gmem_rows<kBlockN, kHeadDim, NumThreads>(
            sK, params.dk + work.bidb * params.dk_batch_stride + work.bidh * params.dk_head_stride +
                    row0 * params.dk_row_stride, params.dk_row_stride, rows_owned, thread_idx);
        smem_to_gmem_rows<kBlockN, kHeadDim, NumThreads>(
            sV, params.dv + work.bidb * params.dv_batch_stride + work.bidh * params.dv_head_stride +
                    row0 * params.dv_row_stride, params.dv_row_stride, rows_owned, thread_idx);
    }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::NumThreads) bwd_kernel_sm80(typename Kernel::Params const params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    extern __shared__ __align__(128) char smem[];
    Kernel{}(params, smem);
#endif
}

}  // namespace hmar
