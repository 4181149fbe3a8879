// Forward mainloop collective for sm90a: TMA producer and wgmma consumers.
//
// Producer (one thread of warpgroup 0): for each work tile, Q by TMA into sQ (1-stage pipeline; kBlockM rows from
// the row tile's row_start, any integer), then for each column tile listed by the mask policy, K and V by TMA
// from its col_start (any integer; TMA zero-fills rows past L) into kStages-deep rings (two pipelines, so QKᵀ can
// start before V lands). Consumers (kBlockM / 64 warpgroups, 64 query rows each): S = Q Kᵀ (SS wgmma), mask +
// online softmax in registers, O += P V (RS wgmma, P straight from the S registers). With intra-warpgroup overlap
// the PV wgmma of tile n-1 runs while the softmax of tile n is computed; with ping-pong, named barriers make the
// warpgroups take turns issuing their wgmma so one warpgroup's softmax hides under the other's matrix work.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "mask.h"
#include "softmax.h"
#include "utils.h"

namespace hmar {

using namespace cute;

template <int kStages_, class TileShape_, class Element_, bool IntraWGOverlap_, bool WGPingPong_>
struct CollectiveMainloopFwdSm90 {
    using TileShape = TileShape_;  // (kBlockM, kBlockN, kHeadDim)
    using Element = Element_;
    static constexpr int kStages = kStages_;
    static constexpr int kBlockM = get<0>(TileShape{});
    static constexpr int kBlockN = get<1>(TileShape{});
    static constexpr int kHeadDim = get<2>(TileShape{});
    static constexpr bool IntraWGOverlap = IntraWGOverlap_;
    static_assert(kBlockM % 64 == 0 && kBlockM <= 192, "one consumer warpgroup per 64 rows, at most 3");
    static constexpr int NumMmaWarpGroups = kBlockM / 64;
    static constexpr int NumMmaThreads = NumMmaWarpGroups * cutlass::NumThreadsPerWarpGroup;
    static constexpr bool UseSchedulerBarrier = WGPingPong_ && NumMmaWarpGroups >= 2;

    using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;
    using AtomLayoutMma = Layout<Shape<Int<NumMmaWarpGroups>, _1, _1>>;
    // S = Q Kᵀ: A = Q, B = K, both K-major (head dim contiguous) in shared memory.
    using TiledMmaQK = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileShape>(),
                                               AtomLayoutMma{}));
    // O = P V: A = P from registers, B = V read as (D, kBlockN) with D contiguous (MN-major).
    using TiledMmaPV = decltype(make_tiled_mma(
        GMMA::rs_op_selector<Element, Element, float, TileShapePV, GMMA::Major::K, GMMA::Major::MN>(),
        AtomLayoutMma{}));

    // 128-byte swizzled tiles: rows of 64 elements; D = 128 is two such column blocks.
    using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                               Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                               Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
    using SmemLayoutVt = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<Element>{},
                                                Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                                                Step<_2, _1, _3>{}));

    using ShapeQKV = Shape<int32_t, int32_t, int32_t, int32_t>;   // (L, D, H, B)
    using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;
    using StrideVt = Stride<_1, int64_t, int64_t, int64_t>;       // V viewed as (D, L, H, B)

    using TMA_Q = decltype(make_tma_copy(
        SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
        SmemLayoutQ{}, select<0, 2>(TileShape{}), _1{}));
    using TMA_K = decltype(make_tma_copy(
        SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
        take<0, 2>(SmemLayoutK{}), select<1, 2>(TileShape{}), _1{}));
    using TMA_V = decltype(make_tma_copy(
        SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideVt{}),
        take<0, 2>(SmemLayoutVt{}), Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}));

    static constexpr uint32_t TmaBytesQ = uint32_t(size(SmemLayoutQ{}) * sizeof(Element));
    static constexpr uint32_t TmaBytesK = uint32_t(size(take<0, 2>(SmemLayoutK{})) * sizeof(Element));
    static constexpr uint32_t TmaBytesV = uint32_t(size(take<0, 2>(SmemLayoutVt{})) * sizeof(Element));

    using PipelineQ = cutlass::PipelineTmaAsync<1>;
    using PipelineKV = cutlass::PipelineTmaAsync<kStages>;
    using PipelineStateQ = cutlass::PipelineState<1>;
    using PipelineStateKV = cutlass::PipelineState<kStages>;

    using Mask = BlockSparseMask<kBlockM, kBlockN, TiledMmaQK>;
    using Softmax = OnlineSoftmax<Mask::kRows>;

    // 1024-byte alignment: the 128-byte swizzle pattern repeats every 8 rows of 128 bytes, and TMA and wgmma
    // apply it to absolute shared-memory addresses.
    struct TensorStorage {
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> smem_q;
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> smem_k;
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutVt>, 1024> smem_v;
    };

    struct Arguments {
        Element const* ptr_q;
        Element const* ptr_k;
        Element const* ptr_v;
        ShapeQKV shape;  // (L, D, H, B)
        StrideQKV stride_q, stride_k, stride_v;
        float softmax_scale_log2;
        TileMaskParams mask;
    };

    struct Params {
        ShapeQKV shape;
        TMA_Q tma_q;
        TMA_K tma_k;
        TMA_V tma_v;
        float softmax_scale_log2;
        TileMaskParams mask;
    };

    static Params to_underlying_arguments(Arguments const& args) {
        Tensor mQ = make_tensor(make_gmem_ptr(args.ptr_q), args.shape, args.stride_q);
        Tensor mK = make_tensor(make_gmem_ptr(args.ptr_k), args.shape, args.stride_k);
        Tensor mVt = make_tensor(make_gmem_ptr(args.ptr_v), shape_vt(args.shape),
                                 make_stride(_1{}, get<0>(args.stride_v), get<2>(args.stride_v),
                                             get<3>(args.stride_v)));
        return {args.shape,
                make_tma_copy(SM90_TMA_LOAD{}, mQ, SmemLayoutQ{}, select<0, 2>(TileShape{}), _1{}),
                make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(SmemLayoutK{}), select<1, 2>(TileShape{}), _1{}),
                make_tma_copy(SM90_TMA_LOAD{}, mVt, take<0, 2>(SmemLayoutVt{}),
                              Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}),
                args.softmax_scale_log2, args.mask};
    }

    CUTE_HOST_DEVICE static auto shape_vt(ShapeQKV const& s) {
        return make_shape(get<1>(s), get<0>(s), get<2>(s), get<3>(s));
    }

    CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const& params) {
        cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
        cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
        cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    }

    // TMA coordinate tiles (host/device, checked by csrc/tests/layout_check.cu): Q rows [row_start, row_start +
    // kBlockM), K rows and Vᵀ columns [key, key + kBlockN), of head bidh of batch bidb. Tiles start at any row:
    // domain_offset moves the coordinate tensor there; TMA zero-fills what lies past L.
    CUTE_HOST_DEVICE static auto tile_q(Params const& params, int row_start, int bidh, int bidb) {
        Tensor mQ = params.tma_q.get_tma_tensor(params.shape)(_, _, bidh, bidb);  // (L, D)
        return local_tile(domain_offset(make_coord(row_start, _0{}), mQ), select<0, 2>(TileShape{}),
                          make_coord(_0{}, _0{}));  // (BM, D)
    }
    CUTE_HOST_DEVICE static auto tile_k(Params const& params, int key, int bidh, int bidb) {
        Tensor mK = params.tma_k.get_tma_tensor(params.shape)(_, _, bidh, bidb);  // (L, D)
        return local_tile(domain_offset(make_coord(key, _0{}), mK), select<1, 2>(TileShape{}),
                          make_coord(_0{}, _0{}));  // (BN, D)
    }
    CUTE_HOST_DEVICE static auto tile_vt(Params const& params, int key, int bidh, int bidb) {
        Tensor mVt = params.tma_v.get_tma_tensor(shape_vt(params.shape))(_, _, bidh, bidb);  // (D, L)
        return local_tile(domain_offset(make_coord(_0{}, key), mVt), Shape<Int<kHeadDim>, Int<kBlockN>>{},
                          make_coord(_0{}, _0{}));  // (D, BN)
    }

    // Producer: called by one thread (the pipelines' leader) for each work tile, after it has acquired the Q
    // buffer (pipeline_q.producer_acquire(q_write)). Q is loaded even for a tile with no column tile to visit, so
    // that producer and consumers step the Q pipeline together.
    CUTLASS_DEVICE void load(Params const& params, PipelineQ& pipeline_q, PipelineKV& pipeline_k,
                             PipelineKV& pipeline_v, PipelineStateQ& q_write, PipelineStateKV& kv_write,
                             TensorStorage& storage, RowTile const& tile, int bidh, int bidb) {
        Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), SmemLayoutQ{});
        Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), SmemLayoutK{});
        Tensor sVt = make_tensor(make_smem_ptr(storage.smem_v.data()), SmemLayoutVt{});
        auto [tQgQ, tQsQ] = tma_partition(params.tma_q, group_modes<0, 2>(sQ),
                                          group_modes<0, 2>(tile_q(params, tile.row_start, bidh, bidb)));
        copy(params.tma_q.with(*pipeline_q.producer_get_barrier(q_write), 0, TMA::CacheHintSm90::EVICT_FIRST),
             tQgQ, tQsQ);
        ++q_write;

        int const* col_start = params.mask.col_start + tile.first;
        int key = tile.count > 0 ? col_start[0] : 0;
        CUTLASS_PRAGMA_NO_UNROLL
        for (int i = 0; i < tile.count; ++i) {
            int const key_next = i + 1 < tile.count ? col_start[i + 1] : 0;  // index load ahead of the wait
            auto [tKgK, tKsK] = tma_partition(params.tma_k, group_modes<0, 2>(sK),
                                              group_modes<0, 2>(tile_k(params, key, bidh, bidb)));
            auto [tVgV, tVsV] = tma_partition(params.tma_v, group_modes<0, 2>(sVt),
                                              group_modes<0, 2>(tile_vt(params, key, bidh, bidb)));
            pipeline_k.producer_acquire(kv_write);
            copy(params.tma_k.with(*pipeline_k.producer_get_barrier(kv_write), 0, TMA::CacheHintSm90::EVICT_LAST),
                 tKgK, tKsK(_, kv_write.index()));
            pipeline_v.producer_acquire(kv_write);
            copy(params.tma_v.with(*pipeline_v.producer_get_barrier(kv_write), 0, TMA::CacheHintSm90::EVICT_LAST),
                 tVgV, tVsV(_, kv_write.index()));
            ++kv_write;
            key = key_next;
        }
    }

    // Ping-pong between consumer warpgroups: warpgroup w waits for its turn before issuing wgmma, then passes
    // the turn on. WG1 gets the first turn in mma_init.
    CUTLASS_DEVICE static void scheduler_barrier_sync(int wg) {
        if constexpr (UseSchedulerBarrier) {
            cutlass::arch::NamedBarrier::sync(2 * cutlass::NumThreadsPerWarpGroup,
                                              uint32_t(FwdNamedBarriers::WarpSchedulerWG1) + wg);
        }
    }

    CUTLASS_DEVICE static void scheduler_barrier_arrive(int wg) {
        if constexpr (UseSchedulerBarrier) {
            int const next = wg + 1 < NumMmaWarpGroups ? wg + 1 : 0;
            cutlass::arch::NamedBarrier::arrive(2 * cutlass::NumThreadsPerWarpGroup,
                                                uint32_t(FwdNamedBarriers::WarpSchedulerWG1) + next);
        }
    }

    CUTLASS_DEVICE static void mma_init(int wg) {
        if constexpr (UseSchedulerBarrier) {
            if (wg == 1) {
                cutlass::arch::NamedBarrier::arrive(2 * cutlass::NumThreadsPerWarpGroup,
                                                    uint32_t(FwdNamedBarriers::WarpSchedulerWG1));
            }
        }
    }

    // Consumers: accumulate this work tile's O (unnormalised) in tOrO and its row statistics in softmax.
    // tOrO must be zero on entry. Returns false when the row tile visits no column tile.
    template <class FrgO>
    CUTLASS_DEVICE bool mma(Params const& params, PipelineQ& pipeline_q, PipelineKV& pipeline_k,
                            PipelineKV& pipeline_v, PipelineStateQ& q_read, PipelineStateKV& kv_read,
                            FrgO& tOrO, Softmax& softmax, Mask& mask, int thread_idx, TensorStorage& storage,
                            RowTile const& tile) {
        if (tile.count == 0) {  // nothing visible: O = 0, LSE = -inf (the epilogue writes them)
            pipeline_q.consumer_wait(q_read);
            pipeline_q.consumer_release(q_read);
            ++q_read;
            return false;
        }
        int const* col_start = params.mask.col_start + tile.first;
        int const* col_end = params.mask.col_end + tile.first;
        if (tile.num_full < tile.count) { mask.load_rows(tile.row_start); }
        // Key range of visit i, for the mask: loaded before the pipeline waits of that visit, used after them.
        auto col_tile = [&](int i) {
            return i >= tile.num_full ? ColTile{__ldg(col_start + i), __ldg(col_end + i)} : ColTile{0, 0};
        };

        Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), SmemLayoutQ{});
        Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), SmemLayoutK{});
        Tensor sVt = make_tensor(make_smem_ptr(storage.smem_v.data()), SmemLayoutVt{});

        int const wg = __shfl_sync(0xffffffff, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
        TiledMmaQK tiled_mma_qk;
        TiledMmaPV tiled_mma_pv;
        // Shared-memory operands are the same for all threads of a warpgroup: slice by warpgroup.
        auto wg_mma_qk = tiled_mma_qk.get_slice(wg * cutlass::NumThreadsPerWarpGroup);
        auto wg_mma_pv = tiled_mma_pv.get_slice(wg * cutlass::NumThreadsPerWarpGroup);
        Tensor tSrQ = wg_mma_qk.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K)
        Tensor tSrK = wg_mma_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, PIPE)
        Tensor tOrV = wg_mma_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, PIPE)

        Tensor tSrS = partition_fragment_C(tiled_mma_qk, select<0, 1>(TileShape{}));  // ((2, 2, BN/8), 1, 1)
        Tensor tSrS_rc = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));         // (rows, cols)
        Tensor tOrO_rc = make_tensor(tOrO.data(), acc_rowcol(tOrO.layout()));
        Tensor tOrP = make_tensor<Element>(acc_as_operand_a(tSrS.layout()));           // ((2, 2, 2), 1, BN/16)
        float o_scale[Mask::kRows];

        // Softmax of the S tile in registers, then P into the A-operand registers of the PV wgmma.
        auto softmax_to_p = [&](int i, ColTile const& col) {
            if (i >= tile.num_full) {
                mask.before_softmax(tSrS_rc, col);
                softmax.template step</*Check_inf=*/true>(tSrS_rc, o_scale);
            } else {
                softmax.template step</*Check_inf=*/false>(tSrS_rc, o_scale);
            }
        };
        auto convert_p = [&] {  // cvt.rn.{bf16,f16}x2.f32, two values per instruction
            constexpr int N = decltype(size(tSrS))::value;
            using Converter = cutlass::NumericArrayConverter<Element, float, N>;
            *reinterpret_cast<cutlass::Array<Element, N>*>(raw_pointer_cast(tOrP.data())) =
                Converter{}(*reinterpret_cast<cutlass::Array<float, N> const*>(raw_pointer_cast(tSrS.data())));
        };

        ColTile const col_0 = col_tile(0);
        pipeline_q.consumer_wait(q_read);

        // Tile 0: S = Q K₀ᵀ, softmax, P₀.
        pipeline_k.consumer_wait(kv_read);
        scheduler_barrier_sync(wg);
        gemm</*zero_init=*/true, /*wg_wait=*/-1>(tiled_mma_qk, tSrQ, tSrK(_, _, _, kv_read.index()), tSrS);
        scheduler_barrier_arrive(wg);
        warpgroup_wait<0>();
        warpgroup_fence_operand(tSrS);  // keep reads of S after the wait
        pipeline_k.consumer_release(kv_read);
        softmax_to_p(0, col_0);
        convert_p();

        if constexpr (IntraWGOverlap) {
            // Step i: issue S_i = Q K_iᵀ and O += P_{i-1} V_{i-1}; softmax of S_i while the PV wgmma runs.
            CUTLASS_PRAGMA_NO_UNROLL
            for (int i = 1; i < tile.count; ++i) {
                ColTile const col = col_tile(i);
                PipelineStateKV v_read = kv_read;
                ++kv_read;
                pipeline_k.consumer_wait(kv_read);
                scheduler_barrier_sync(wg);
                gemm</*zero_init=*/true, /*wg_wait=*/-1>(tiled_mma_qk, tSrQ, tSrK(_, _, _, kv_read.index()), tSrS);
                pipeline_v.consumer_wait(v_read);
                gemm</*zero_init=*/false, /*wg_wait=*/-1>(tiled_mma_pv, tOrP, tOrV(_, _, _, v_read.index()), tOrO);
                scheduler_barrier_arrive(wg);
                warpgroup_wait<1>();  // S_i is ready (groups complete in order)
                warpgroup_fence_operand(tSrS);
                pipeline_k.consumer_release(kv_read);
                softmax_to_p(i, col);
                warpgroup_wait<0>();  // O += P_{i-1} V_{i-1} done: P registers and V_{i-1} are free
                warpgroup_fence_operand(tOrO);
                warpgroup_fence_operand(tOrP);
                pipeline_v.consumer_release(v_read);
                convert_p();
                Softmax::rescale(tOrO_rc, o_scale);
            }
            pipeline_q.consumer_release(q_read);  // the last QKᵀ wgmma has completed
            ++q_read;
            pipeline_v.consumer_wait(kv_read);
            gemm</*zero_init=*/false, /*wg_wait=*/0>(tiled_mma_pv, tOrP, tOrV(_, _, _, kv_read.index()), tOrO);
            pipeline_v.consumer_release(kv_read);
            ++kv_read;
        } else {
            // No overlap: S_i, softmax, O += P_i V_i, one after the other.
            pipeline_v.consumer_wait(kv_read);
            gemm</*zero_init=*/false, /*wg_wait=*/0>(tiled_mma_pv, tOrP, tOrV(_, _, _, kv_read.index()), tOrO);
            pipeline_v.consumer_release(kv_read);
            ++kv_read;
            CUTLASS_PRAGMA_NO_UNROLL
            for (int i = 1; i < tile.count; ++i) {
                ColTile const col = col_tile(i);
                pipeline_k.consumer_wait(kv_read);
                scheduler_barrier_sync(wg);
                gemm</*zero_init=*/true, /*wg_wait=*/-1>(tiled_mma_qk, tSrQ, tSrK(_, _, _, kv_read.index()), tSrS);
                scheduler_barrier_arrive(wg);
                warpgroup_wait<0>();
                warpgroup_fence_operand(tSrS);
                pipeline_k.consumer_release(kv_read);
                softmax_to_p(i, col);
                convert_p();
                Softmax::rescale(tOrO_rc, o_scale);
                pipeline_v.consumer_wait(kv_read);
                gemm</*zero_init=*/false, /*wg_wait=*/0>(tiled_mma_pv, tOrP, tOrV(_, _, _, kv_read.index()), tOrO);
                pipeline_v.consumer_release(kv_read);
                ++kv_read;
            }
            pipeline_q.consumer_release(q_read);
            ++q_read;
        }
        return true;
    }
};

}  // namespace hmar
