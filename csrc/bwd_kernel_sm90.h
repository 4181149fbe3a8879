// The sm90a backward kernel (dK/dV with atomic dQ, dK/dV alone, the dQ pass, or dK/dV and dQ programs in one
// launch: see bwd_mainloop_sm90.hpp): sets up the pipelines, gives warpgroup 0 to the TMA producer and the others to
// the wgmma consumers, and runs one program (row tile, batch·head) of the heaviest-first program table per CTA.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "mask.h"
#include "tile_scheduler.h"
#include "utils.h"

namespace hmar {

using namespace cute;

// One kind of program: its mainloop and epilogue collectives and their device parameters.
template <class Mainloop_, class Epilogue_>
struct BwdPass {
    using Mainloop = Mainloop_;
    using Epilogue = Epilogue_;
    struct Params {
        typename Mainloop::Params mainloop;
        typename Epilogue::Params epilogue;
    };
};

// Pass1 = void: every program is Pass0's. Otherwise the program table mixes both kinds (code >> 24: 0 → Pass0,
// 1 → Pass1; launch_order), so the dK/dV and dQ programs of the deterministic backward share one launch and one
// heaviest-first order. Both passes use the same tile shape and pipeline depth.
template <class Pass0, class Pass1 = void>
struct FlashAttnBwdSm90 {
    static constexpr bool kPaired = !std::is_void_v<Pass1>;
    using PassB = std::conditional_t<kPaired, Pass1, Pass0>;  // Pass0 again when unpaired (never run)
    using Mainloop = typename Pass0::Mainloop;
    static constexpr int NumMmaWarpGroups = Mainloop::NumMmaWarpGroups;
    static constexpr int NumMmaThreads = Mainloop::NumMmaThreads;
    static constexpr int NumThreads = NumMmaThreads + cutlass::NumThreadsPerWarpGroup;
    static_assert(NumMmaWarpGroups == 2);
    static_assert(std::is_same_v<typename Mainloop::TileShape, typename PassB::Mainloop::TileShape> &&
                  Mainloop::kStages == PassB::Mainloop::kStages, "paired passes share tiles and pipelines");
    // setmaxnreg (65536 registers per SM, one CTA per SM): 128·(24 + 2·240) = 64512.
    static constexpr uint32_t LoadRegisters = 24;
    static constexpr uint32_t MmaRegisters = 240;

    using PipelineRow = typename Mainloop::PipelineRow;
    using PipelineCol = typename Mainloop::PipelineCol;

    struct SharedStorage {
        union {
            typename Pass0::Mainloop::TensorStorage pass0;
            typename PassB::Mainloop::TensorStorage pass1;
        } mainloop;
        alignas(16) typename PipelineRow::SharedStorage pipeline_row;
        alignas(16) typename PipelineCol::SharedStorage pipeline_col;
    };
    static constexpr int SharedStorageSize = sizeof(SharedStorage);

    struct Params {
        typename Pass0::Params pass0;
        typename PassB::Params pass1;  // a copy of pass0 when unpaired
        PersistentTileScheduler::Params scheduler;  // the program table; one CTA per program, no counter
    };

    CUTLASS_DEVICE void operator()(Params const& params, char* smem_buf) {
        SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);
        int const warp_group_idx = cutlass::canonical_warp_group_idx();
        bool const is_leader = threadIdx.x == 0;  // the producer thread: issues every TMA load
        if (is_leader && cute::cast_smem_ptr_to_uint(smem_buf) % 1024 != 0) { __trap(); }  // swizzled tiles

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

        auto const work = PersistentTileScheduler::get(params.scheduler, blockIdx.x);
        bool const second = kPaired && (__ldg(params.scheduler.programs + 2 * blockIdx.x) >> 24) == 1;
        if (second) {
            run<PassB>(params.pass1, shared.mainloop.pass1, pipeline_row, pipeline_col, work, warp_group_idx,
                       is_leader);
        } else {
            run<Pass0>(params.pass0, shared.mainloop.pass0, pipeline_row, pipeline_col, work, warp_group_idx,
                       is_leader);
        }
    }

    // One program of one pass: the producer thread loads, the consumer warpgroups accumulate and store. setmaxnreg
    // stays inside each role's branch: ptxas budgets registers by the setmaxnreg that dominates the code (after a
    // merge point it budgeted the consumers' loop for fewer registers and spilled 804 bytes at D = 128).
    template <class Pass>
    CUTLASS_DEVICE static void run(typename Pass::Params const& params,
                                   typename Pass::Mainloop::TensorStorage& storage, PipelineRow& pipeline_row,
                                   PipelineCol& pipeline_col, PersistentTileScheduler::WorkTile const& work,
                                   int warp_group_idx, bool is_leader) {
        using PassMainloop = typename Pass::Mainloop;
        RowTile const tile = row_tile(params.mainloop.mask, work.tile);
        PassMainloop mainloop;
        if (warp_group_idx == 0) {  // producer
            cutlass::arch::warpgroup_reg_dealloc<LoadRegisters>();
            if (is_leader && tile.count > 0) {  // the pipelines' leader arms the barriers
                PassMainloop::prefetch_tma_descriptors(params.mainloop);
                auto row_write = cutlass::make_producer_start_state<PipelineRow>();
                auto col_write = cutlass::make_producer_start_state<PipelineCol>();
                mainloop.load(params.mainloop, pipeline_row, pipeline_col, row_write, col_write, storage, tile,
                              work.bidh, work.bidb);
            }
        } else {  // consumers
            cutlass::arch::warpgroup_reg_alloc<MmaRegisters>();
            int const thread_idx = threadIdx.x - cutlass::NumThreadsPerWarpGroup;
            typename PassMainloop::TiledMmaAcc tiled_mma_acc;
            auto const acc_shape = Shape<Int<PassMainloop::kBlockM>, Int<PassMainloop::kHeadDim>>{};
            Tensor acc1 = partition_fragment_C(tiled_mma_acc, acc_shape);  // (MMA, MMA_M, MMA_N)
            Tensor acc2 = partition_fragment_C(tiled_mma_acc, acc_shape);
            clear(acc1);
            clear(acc2);
            if (tile.count > 0) {
                typename PassMainloop::PipelineStateRow row_read;
                typename PassMainloop::PipelineStateCol col_read;
                typename PassMainloop::Mask mask(params.mainloop.mask, thread_idx);
                mainloop.mma(params.mainloop, pipeline_row, pipeline_col, row_read, col_read, acc1, acc2, mask,
                             thread_idx, storage, tile, work.bidh, work.bidb);
            }
            typename Pass::Epilogue{}.store(params.epilogue, acc1, acc2, thread_idx, tile.row_start, tile.row_end,
                                            work.bidh, work.bidb);
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
