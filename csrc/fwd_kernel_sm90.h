// The sm90a forward kernel: sets up the pipelines, gives warpgroup 0 to the TMA producer and the others to the
// wgmma consumers, and walks the work tiles of the scheduler. The math lives in the collectives
// (fwd_mainloop_sm90.hpp, fwd_epilogue.hpp); the mask in mask.h.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "mask.h"
#include "utils.h"

namespace hmar {

using namespace cute;

template <class Mainloop_, class Epilogue_, class Scheduler_>
struct FlashAttnFwdSm90 {
    using Mainloop = Mainloop_;
    using Epilogue = Epilogue_;
    using Scheduler = Scheduler_;
    static constexpr int NumMmaWarpGroups = Mainloop::NumMmaWarpGroups;
    static constexpr int NumMmaThreads = Mainloop::NumMmaThreads;
    static constexpr int NumThreads = NumMmaThreads + cutlass::NumThreadsPerWarpGroup;
    static_assert(Epilogue::NumMmaThreads == NumMmaThreads);

    // setmaxnreg budget (65536 registers per SM, one CTA per SM): the producer warpgroup needs few; the consumers
    // take the rest. 2 consumer WGs: 24 + 2·240 → 128·(24 + 480) = 64512; 3: 128·(32 + 3·160) = 65536.
    static constexpr uint32_t LoadRegisters = NumMmaWarpGroups == 1 ? 56 : (NumMmaWarpGroups == 2 ? 24 : 32);
    static constexpr uint32_t MmaRegisters = NumMmaWarpGroups == 1 ? 256 : (NumMmaWarpGroups == 2 ? 240 : 160);

    struct SharedStorage {
        typename Mainloop::TensorStorage mainloop;
        typename Epilogue::TensorStorage epilogue;
        alignas(16) typename Mainloop::PipelineQ::SharedStorage pipeline_q;
        alignas(16) typename Mainloop::PipelineKV::SharedStorage pipeline_k;
        alignas(16) typename Mainloop::PipelineKV::SharedStorage pipeline_v;
        int next_work;  // the program after the current one, published by the producer warp
    };
    static constexpr int SharedStorageSize = sizeof(SharedStorage);

    struct Params {
        typename Mainloop::Params mainloop;
        typename Epilogue::Params epilogue;
        typename Scheduler::Params scheduler;
        float softmax_scale;
    };

    CUTLASS_DEVICE void operator()(Params const& params, char* smem_buf) {
        SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);
        int const warp_idx = cutlass::canonical_warp_idx_sync();
        int const warp_group_idx = cutlass::canonical_warp_group_idx();
        bool const is_leader = threadIdx.x == 0;  // the producer thread: claims work, issues every TMA load

        if (is_leader) {
            // The swizzled tiles assume a 1024-byte aligned shared-memory window.
            if (cute::cast_smem_ptr_to_uint(smem_buf) % 1024 != 0) { __trap(); }
            Mainloop::prefetch_tma_descriptors(params.mainloop);
        }

        using PipelineQ = typename Mainloop::PipelineQ;
        using PipelineKV = typename Mainloop::PipelineKV;
        auto role = warp_group_idx == 0 ? PipelineKV::ThreadCategory::Producer
                                        : PipelineKV::ThreadCategory::Consumer;
        typename PipelineQ::Params params_q;
        params_q.role = warp_group_idx == 0 ? PipelineQ::ThreadCategory::Producer
                                            : PipelineQ::ThreadCategory::Consumer;
        params_q.is_leader = is_leader;
        params_q.num_consumers = NumMmaThreads;
        params_q.transaction_bytes = Mainloop::TmaBytesQ;
        typename PipelineKV::Params params_k;
        params_k.role = role;
        params_k.is_leader = is_leader;
        params_k.num_consumers = NumMmaThreads;
        params_k.transaction_bytes = Mainloop::TmaBytesK;
        typename PipelineKV::Params params_v = params_k;
        params_v.transaction_bytes = Mainloop::TmaBytesV;
        // The constructors initialise the mbarriers (warp 0) and fence the initialisation.
        PipelineQ pipeline_q(shared.pipeline_q, params_q, Shape<_1, _1, _1>{});
        PipelineKV pipeline_k(shared.pipeline_k, params_k, Shape<_1, _1, _1>{});
        PipelineKV pipeline_v(shared.pipeline_v, params_v, Shape<_1, _1, _1>{});
        __syncthreads();

        Mainloop mainloop;
        Epilogue epilogue;

        // Work distribution: the producer warp claims the program after the current one (one ahead, so the
        // atomic's latency hides behind the loads), and publishes it in shared.next_work before issuing the
        // current tile's loads; consumers read it at the WorkReady barrier when they start the current tile.
        // The producer publishes only after acquiring the Q buffer, i.e. after the consumers released the previous
        // tile's Q, which they do after reading next_work: one slot and one barrier generation suffice.
        if (warp_group_idx == 0) {  // producer
            cutlass::arch::warpgroup_reg_dealloc<LoadRegisters>();
            if (warp_idx == 0) {
                int const lane = threadIdx.x % cutlass::NumThreadsPerWarp;
                auto q_write = cutlass::make_producer_start_state<PipelineQ>();
                auto kv_write = cutlass::make_producer_start_state<PipelineKV>();
                int w = blockIdx.x;
                int next = lane == 0 ? Scheduler::claim_next(params.scheduler, w) : 0;
                CUTLASS_PRAGMA_NO_UNROLL
                while (Scheduler::valid(params.scheduler, w)) {
                    if (lane == 0) {
                        pipeline_q.producer_acquire(q_write);
                        shared.next_work = next;
                    }
                    __syncwarp();
                    cutlass::arch::NamedBarrier::arrive(NumMmaThreads + cutlass::NumThreadsPerWarp,
                                                        uint32_t(FwdNamedBarriers::WorkReady));
                    if (lane == 0) {
                        auto const work = Scheduler::get(params.scheduler, w);
                        RowTile const tile = row_tile(params.mainloop.mask, work.tile);
                        mainloop.load(params.mainloop, pipeline_q, pipeline_k, pipeline_v, q_write, kv_write,
                                      shared.mainloop, tile, work.bidh, work.bidb);
                    }
                    w = __shfl_sync(0xffffffff, next, 0);
                    if (lane == 0 && Scheduler::valid(params.scheduler, w)) {
                        next = Scheduler::claim_next(params.scheduler, w);
                    }
                }
                if (lane == 0) { Scheduler::finish(params.scheduler); }
            }
        } else {  // consumers
            cutlass::arch::warpgroup_reg_alloc<MmaRegisters>();
            int const thread_idx = threadIdx.x - cutlass::NumThreadsPerWarpGroup;
            Mainloop::mma_init(warp_group_idx - 1);
            typename Mainloop::PipelineStateQ q_read;
            typename Mainloop::PipelineStateKV kv_read;
            typename Mainloop::Mask mask(params.mainloop.mask, thread_idx);
            typename Mainloop::TiledMmaPV tiled_mma_pv;
            int w = blockIdx.x;
            CUTLASS_PRAGMA_NO_UNROLL
            while (Scheduler::valid(params.scheduler, w)) {
                cutlass::arch::NamedBarrier::sync(NumMmaThreads + cutlass::NumThreadsPerWarp,
                                                  uint32_t(FwdNamedBarriers::WorkReady));
                int const next = shared.next_work;
                auto const work = Scheduler::get(params.scheduler, w);
                RowTile const tile = row_tile(params.mainloop.mask, work.tile);
                Tensor tOrO = partition_fragment_C(tiled_mma_pv, select<0, 2>(typename Mainloop::TileShape{}));
                clear(tOrO);
                typename Mainloop::Softmax softmax(params.mainloop.softmax_scale_log2);
                mainloop.mma(params.mainloop, pipeline_q, pipeline_k, pipeline_v, q_read, kv_read, tOrO, softmax,
                             mask, thread_idx, shared.mainloop, tile);
                float o_scale[Mainloop::Mask::kRows];
                float lse[Mainloop::Mask::kRows];
                softmax.finalize(params.softmax_scale, o_scale, lse);
                Tensor tOrO_rc = make_tensor(tOrO.data(), acc_rowcol(tOrO.layout()));
                Mainloop::Softmax::rescale(tOrO_rc, o_scale);
                epilogue.store(params.epilogue, tOrO, lse, shared.epilogue, thread_idx, tile.row_start, tile.row_end,
                               work.bidh, work.bidb);
                w = next;
            }
        }
    }
};

// __grid_constant__: the TMA descriptors inside params must live in parameter space.
template <class Kernel>
__global__ void __launch_bounds__(Kernel::NumThreads, 1)
    fwd_kernel_sm90(CUTE_GRID_CONSTANT typename Kernel::Params const params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(1024) char smem[];
    Kernel{}(params, smem);
#endif
}

}  // namespace hmar
