// The sm90a backward kernel (dK/dV with atomic dQ, dK/dV alone, or the dQ pass: see bwd_mainloop_sm90.hpp): sets
// up the pipelines, gives warpgroup 0 to the TMA producer and the others to the wgmma consumers, and runs one
// program (row tile, batch·head) of the heaviest-first program table per CTA.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "mask.h"
#include "tile_scheduler.h"
#include "utils.h"

namespace hmar {

using namespace cute;

template <class Mainloop_, class Epilogue_>
struct FlashAttnBwdSm90 {
    using Mainloop = Mainloop_;
    using Epilogue = Epilogue_;
    static constexpr int NumMmaWarpGroups = Mainloop::NumMmaWarpGroups;
    static constexpr int NumMmaThreads = Mainloop::NumMmaThreads;
    static constexpr int NumThreads = NumMmaThreads + cutlass::NumThreadsPerWarpGroup;
    static_assert(NumMmaWarpGroups == 2);
    // setmaxnreg (65536 registers per SM, one CTA per SM): 128·(24 + 2·240) = 64512.
    static constexpr uint32_t LoadRegisters = 24;
    static constexpr uint32_t MmaRegisters = 240;

    struct SharedStorage {
        typename Mainloop::TensorStorage mainloop;
        alignas(16) typename Mainloop::PipelineRow::SharedStorage pipeline_row;
        alignas(16) typename Mainloop::PipelineCol::SharedStorage pipeline_col;
    };
    static constexpr int SharedStorageSize = sizeof(SharedStorage);

    struct Params {
        typename Mainloop::Params mainloop;
        typename Epilogue::Params epilogue;
        PersistentTileScheduler::Params scheduler;  // its program table; one CTA per program, no counter
    };

    CUTLASS_DEVICE void operator()(Params const& params, char* smem_buf) {
        SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);
        int const warp_group_idx = cutlass::canonical_warp_group_idx();
        bool const is_leader = threadIdx.x == 0;  // the producer thread: issues every TMA load

        if (is_leader) {
            if (cute::cast_smem_ptr_to_uint(smem_buf) % 1024 != 0) { __trap(); }  // swizzled tiles need it
            Mainloop::prefetch_tma_descriptors(params.mainloop);
        }

        using PipelineRow = typename Mainloop::PipelineRow;
        using PipelineCol = typename Mainloop::PipelineCol;
        typename PipelineRow::Params params_row;
        params_row.role = warp_group_idx == 0 ? PipelineRow::ThreadCategory::Producer
                                              : PipelineRow::ThreadCategory::Consumer;
        params_row.is_leader = is_leader;
        params_row.num_consumers = NumMmaThreads;
        params_row.transaction_bytes = Mainloop::TmaBytesRow;
        typename PipelineCol::Params params_col;
        params_col.role = warp_group_idx == 0 ? PipelineCol::ThreadCategory::Producer
                                              : PipelineCol::ThreadCategory::Consumer;
        params_col.is_leader = is_leader;
        params_col.num_consumers = NumMmaThreads;
        params_col.transaction_bytes = Mainloop::TmaBytesCol;
        PipelineRow pipeline_row(shared.pipeline_row, params_row, Shape<_1, _1, _1>{});
        PipelineCol pipeline_col(shared.pipeline_col, params_col, Shape<_1, _1, _1>{});
        __syncthreads();

        Mainloop mainloop;
        auto const work = PersistentTileScheduler::get(params.scheduler, blockIdx.x);
        RowTile const tile = row_tile(params.mainloop.mask, work.tile);

        if (warp_group_idx == 0) {  // producer
            cutlass::arch::warpgroup_reg_dealloc<LoadRegisters>();
            if (is_leader && tile.count > 0) {  // the pipelines' leader arms the barriers
                auto row_write = cutlass::make_producer_start_state<PipelineRow>();
                auto col_write = cutlass::make_producer_start_state<PipelineCol>();
                mainloop.load(params.mainloop, pipeline_row, pipeline_col, row_write, col_write, shared.mainloop,
                              tile, work.bidh, work.bidb);
            }
        } else {  // consumers
            cutlass::arch::warpgroup_reg_alloc<MmaRegisters>();
            int const thread_idx = threadIdx.x - cutlass::NumThreadsPerWarpGroup;
            typename Mainloop::TiledMmaAcc tiled_mma_acc;
            Tensor acc1 = partition_fragment_C(tiled_mma_acc, Shape<Int<Mainloop::kBlockM>, Int<Mainloop::kHeadDim>>{});
            Tensor acc2 = partition_fragment_C(tiled_mma_acc, Shape<Int<Mainloop::kBlockM>, Int<Mainloop::kHeadDim>>{});
            clear(acc1);
            clear(acc2);
            if (tile.count > 0) {
                typename Mainloop::PipelineStateRow row_read;
                typename Mainloop::PipelineStateCol col_read;
                typename Mainloop::Mask mask(params.mainloop.mask, thread_idx);
                mainloop.mma(params.mainloop, pipeline_row, pipeline_col, row_read, col_read, acc1, acc2, mask,
                             thread_idx, shared.mainloop, tile, work.bidh, work.bidb);
            }
            Epilogue{}.store(params.epilogue, acc1, acc2, thread_idx, tile.row_start, tile.row_end, work.bidh,
                             work.bidb);
        }
    }
};

// __grid_constant__: the TMA descriptors inside params must live in parameter space.
template <class Kernel>
__global__ void __launch_bounds__(Kernel::NumThreads, 1)
    bwd_kernel_sm90(CUTE_GRID_CONSTANT typename Kernel::Params const params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(1024) char smem[];
    Kernel{}(params, smem);
#endif
}

}  // namespace hmar
