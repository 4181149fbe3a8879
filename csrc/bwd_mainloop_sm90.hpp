// Backward mainloop collective for sm90a: TMA producer and wgmma consumers.
//
// A CTA owns block_rows *rows* and walks the *column* tiles that the TileMask lists for them. Two roles:
//   dK/dV (every kind but DQ): rows are keys, columns queries (the transposed pattern's TileMask). Row operands
//       A1 = K, A2 = V; column operands B1 = Q, B2 = dO. LSE and delta belong to the columns.
//   dQ pass (kind DQ): rows are queries, columns keys (the forward's TileMask). A1 = Q, A2 = dO; B1 = K, B2 = V.
//       LSE and delta belong to the rows.
// Per column tile, each consumer warpgroup (64 rows) computes, with P = exp2(S·scale_log2 − lse_log2),
//   S = A1·B1ᵀ, dP = A2·B2ᵀ                        (SS wgmma, both K-major)
//   dS = P ∘ (dP − delta)                          (registers)
//   acc1 += dS·B1                                  (RS wgmma: dS from registers, B1 read transposed, MN-major)
//   acc2 += P·B2 (dK/dV only)                      (RS wgmma)
// so acc1 = dK / softmax_scale and acc2 = dV, or acc1 = dQ / softmax_scale in the dQ pass. The atomic kinds also
// write dS to shared memory and add dQ_partial = dSᵀ·K (SS wgmma, both operands read transposed) to dq_accum with
// fp32 atomics: per warpgroup over its own 64 keys (DKdVAtomicDQ), or over all 128 keys for half of the head dims
// (DKdVAtomicDQSplit: half the atomics; DKdVBulkDQSplit: the same dQ through shared memory and one TMA bulk
// reduce-add of 64 rows per warpgroup instead of per-thread atomics).
//
// Masking: partial column tiles run the forward's mask policy (BlockSparseMask: S = −inf where a row must not see
// a column), so P = 0 there; lse_log2 is +inf for columns past L and for rows that see nothing. Rows computed past
// the row tile's row_end belong to another CTA: the atomic kinds zero their P so that they add nothing to dQ
// (their dK/dV are computed and dropped).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "mask.h"
#include "utils.h"

namespace hmar {

using namespace cute;

// Named barriers of the backward (ids after CUTLASS's reserved ones, like FwdNamedBarriers): one per consumer
// warpgroup around its dS slab in shared memory.
enum class BwdNamedBarriers : uint32_t {
    DSWG1 = 0,  // DSWG1, DSWG2: one consumer warpgroup around its dS slab (DKdVAtomicDQ)
    DSWG2 = 1,
    DSAll = 2,  // both consumer warpgroups around the whole dS tile (DKdVAtomicDQSplit)
};

enum class BwdKernelKind {
    DKdV,               // dK, dV only (the deterministic path's first kernel)
    DKdVAtomicDQ,       // dK, dV, and dQ per warpgroup by fp32 atomics
    DKdVAtomicDQSplit,  // dK, dV, and dQ split over head dims between the warpgroups, by fp32 atomics
    DKdVBulkDQSplit,    // the same split, dQ added by TMA bulk reduce-add (cp.reduce.async.bulk) from shared memory
    DQ,                 // the deterministic path's dQ pass
};

template <int kStages_, class TileShape_, class Element_, BwdKernelKind kKind_, bool kOverlapAcc_>
struct CollectiveMainloopBwdSm90 {
    using TileShape = TileShape_;  // (kBlockM rows, kBlockN columns, kHeadDim)
    using Element = Element_;
    static constexpr int kStages = kStages_;
    static constexpr int kBlockM = get<0>(TileShape{});
    static constexpr int kBlockN = get<1>(TileShape{});
    static constexpr int kHeadDim = get<2>(TileShape{});
    static constexpr BwdKernelKind kKind = kKind_;
    static constexpr bool kDQPass = kKind == BwdKernelKind::DQ;
    static constexpr bool kDQBulk = kKind == BwdKernelKind::DKdVBulkDQSplit;
    static constexpr bool kDQSplit = kKind == BwdKernelKind::DKdVAtomicDQSplit || kDQBulk;
    static constexpr bool kAtomicDQ = kKind == BwdKernelKind::DKdVAtomicDQ || kDQSplit;
    // dq_accum is (B, H, kDQAccumSplits, L + kBlockN, D / kDQAccumSplits) fp32: with the bulk reduce-add each
    // warpgroup's (64 columns, D/2) block is contiguous in global memory; the kBlockN padding rows absorb columns
    // past L.
    static constexpr int kDQAccumSplits = kDQBulk ? kBlockM / 64 : 1;  // one per consumer warpgroup
    // Leave a column tile's acc wgmma (dS·B1, P·B2) in flight until the next tile's S is ready, and release its
    // shared-memory stage then: the next tile's pipeline wait, index loads and S/dP issue overlap them. With the
    // split dQ, the dQ wgmma is issued first (it waits for everything before it); not with the per-warpgroup dQ,
    // and not for dK/dV at D = 128, where P and dS in flight next to dK, dV, S and dP spilled 692 bytes.
    static constexpr bool kOverlapAcc = kOverlapAcc_ && (!kAtomicDQ || kDQSplit) && (kHeadDim <= 64 || kDQPass);
    static constexpr bool kHasAcc2 = !kDQPass;
    static_assert(kBlockM == 128, "two consumer warpgroups of 64 rows");
    static_assert(kBlockN == 64, "the dQ update reads dS_w (64 columns) as one 128-byte swizzled slab");
    static constexpr int NumMmaWarpGroups = kBlockM / 64;
    static constexpr int NumMmaThreads = NumMmaWarpGroups * cutlass::NumThreadsPerWarpGroup;
    static constexpr int kDQChunk = 64;  // dQ columns per wgmma batch: 32 fp32 accumulators per thread
    static constexpr int kDQChunks = kHeadDim / kDQChunk;

    using AtomLayoutMma = Layout<Shape<Int<NumMmaWarpGroups>, _1, _1>>;
    // S, dP = (rows, cols): A = A1/A2 (rows, D), B = B1/B2 (cols, D), both K-major.
    using TiledMmaSdP = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileShape>(),
                                                AtomLayoutMma{}));
    // acc (rows, D) += X (rows, cols) · B (cols, D): X from registers, B read as (D, cols), D contiguous.
    using TileShapeAcc = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;
    using TiledMmaAcc = decltype(make_tiled_mma(
        GMMA::rs_op_selector<Element, Element, float, TileShapeAcc, GMMA::Major::K, GMMA::Major::MN>(),
        AtomLayoutMma{}));
    // dQ chunk (cols, 64) += dS_wᵀ (cols, 64 rows of warpgroup w) · K_w (64 rows, 64 dims): one warpgroup, A read
    // as (cols, rows) with cols contiguous, B as (dims, rows) with dims contiguous: both MN-major.
    using TileShapeDQ = Shape<Int<kBlockN>, Int<kDQChunk>, _64>;
    using TiledMmaDQ = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float, TileShapeDQ, GMMA::Major::MN, GMMA::Major::MN>(),
        Layout<Shape<_1, _1, _1>>{}));
    // Split: dQ (cols, D) += dSᵀ (cols, all rows) · K (rows, D), warpgroup w computing head dims
    // [w·D/2, (w+1)·D/2) (the atom's N; for D = 64 that is half a 128-byte swizzle row of the transposed K view).
    using TileShapeDQSplit = Shape<Int<kBlockN>, Int<kHeadDim / NumMmaWarpGroups>, Int<kBlockM>>;
    using TiledMmaDQSplit = decltype(make_tiled_mma(
        GMMA::ss_op_selector<Element, Element, float, TileShapeDQSplit, GMMA::Major::MN, GMMA::Major::MN>(),
        Layout<Shape<_1, Int<NumMmaWarpGroups>, _1>>{}));

    // 128-byte swizzled tiles (rows of 64 elements), 1024-byte aligned. Transposed views by composition.
    using SmemLayoutRow = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                                 Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    using SmemLayoutRowT = decltype(composition(
        SmemLayoutRow{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockM>>{}, Stride<Int<kBlockM>, _1>{})));
    using SmemLayoutCol = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                                 Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
    using SmemLayoutColT = decltype(composition(
        SmemLayoutCol{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                                     Stride<Int<kBlockN>, _1, Int<kBlockN * kHeadDim>>{})));
    using SmemLayoutDS = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                                Shape<Int<kBlockM>, Int<kBlockN>>{}));
    using SmemLayoutDSt = decltype(composition(
        SmemLayoutDS{}, make_layout(Shape<Int<kBlockN>, Int<kBlockM>>{}, Stride<Int<kBlockM>, _1>{})));

    using ShapeQKV = Shape<int32_t, int32_t, int32_t, int32_t>;  // (L, D, H, B)
    using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;

    using TMA_Row = decltype(make_tma_copy(
        SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
        SmemLayoutRow{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
    using TMA_Col = decltype(make_tma_copy(
        SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
        take<0, 2>(SmemLayoutCol{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));

    static constexpr uint32_t TmaBytesRow = uint32_t(2 * size(SmemLayoutRow{}) * sizeof(Element));  // A1 + A2
    static constexpr uint32_t TmaBytesCol = uint32_t(2 * size(take<0, 2>(SmemLayoutCol{})) * sizeof(Element));

    using PipelineRow = cutlass::PipelineTmaAsync<1>;
    using PipelineCol = cutlass::PipelineTmaAsync<kStages>;
    using PipelineStateRow = cutlass::PipelineState<1>;
    using PipelineStateCol = cutlass::PipelineState<kStages>;

    using Mask = BlockSparseMask<kBlockM, kBlockN, TiledMmaSdP>;

    struct TensorStorage {
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutRow>, 1024> smem_a1;
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutRow>, 1024> smem_a2;
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutCol>, 1024> smem_b1;
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutCol>, 1024> smem_b2;
        cute::array_aligned<Element, kAtomicDQ ? cute::cosize_v<SmemLayoutDS> : 1, 1024> smem_ds;
        // DKdVBulkDQSplit: each warpgroup's dQ block (kBlockN, D/2) fp32, row-major (the bulk copy's source).
        cute::array_aligned<float, kDQBulk ? kBlockN * kHeadDim : 1, 128> smem_dq;
    };

    struct Arguments {
        Element const* ptr_a1;  // row operands (K, V) or (Q, dO)
        Element const* ptr_a2;
        Element const* ptr_b1;  // column operands (Q, dO) or (K, V)
        Element const* ptr_b2;
        ShapeQKV shape;  // (L, D, H, B)
        StrideQKV stride_a1, stride_a2, stride_b1, stride_b2;
        float const* lse_log2;  // (B, H, L)
        float const* delta;     // (B, H, L)
        float* dq_accum;        // (B, H, kDQAccumSplits, L + kBlockN, D / kDQAccumSplits), kAtomicDQ only
        float softmax_scale_log2;
        TileMaskParams mask;
    };

    struct Params {
        ShapeQKV shape;
        TMA_Row tma_a1, tma_a2;
        TMA_Col tma_b1, tma_b2;
        float const* lse_log2;
        float const* delta;
        float* dq_accum;
        float softmax_scale_log2;
        TileMaskParams mask;
    };

    static Params to_underlying_arguments(Arguments const& args) {
        auto row_tma = [&](Element const* ptr, StrideQKV const& stride) {
            return make_tma_copy(SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(ptr), args.shape, stride),
                                 SmemLayoutRow{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
        };
        auto col_tma = [&](Element const* ptr, StrideQKV const& stride) {
            return make_tma_copy(SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(ptr), args.shape, stride),
                                 take<0, 2>(SmemLayoutCol{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
        };
        return {args.shape,
                row_tma(args.ptr_a1, args.stride_a1), row_tma(args.ptr_a2, args.stride_a2),
                col_tma(args.ptr_b1, args.stride_b1), col_tma(args.ptr_b2, args.stride_b2),
                args.lse_log2, args.delta, args.dq_accum, args.softmax_scale_log2, args.mask};
    }

    CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const& params) {
        cute::prefetch_tma_descriptor(params.tma_a1.get_tma_descriptor());
        cute::prefetch_tma_descriptor(params.tma_a2.get_tma_descriptor());
        cute::prefetch_tma_descriptor(params.tma_b1.get_tma_descriptor());
        cute::prefetch_tma_descriptor(params.tma_b2.get_tma_descriptor());
    }

    // TMA coordinate tile of `rows` rows starting at any row (TMA zero-fills what lies past L).
    template <int kRows, class TMA>
    CUTE_HOST_DEVICE static auto tile_at(Params const& params, TMA const& tma, int row, int bidh, int bidb) {
        Tensor m = tma.get_tma_tensor(params.shape)(_, _, bidh, bidb);  // (L, D)
        return local_tile(domain_offset(make_coord(row, _0{}), m), Shape<Int<kRows>, Int<kHeadDim>>{},
                          make_coord(_0{}, _0{}));  // (kRows, D)
    }

    // Producer: one thread (the pipelines' leader) per work tile with at least one column tile.
    CUTLASS_DEVICE void load(Params const& params, PipelineRow& pipeline_row, PipelineCol& pipeline_col,
                             PipelineStateRow& row_write, PipelineStateCol& col_write, TensorStorage& storage,
                             RowTile const& tile, int bidh, int bidb) {
        Tensor sA1 = make_tensor(make_smem_ptr(storage.smem_a1.data()), SmemLayoutRow{});
        Tensor sA2 = make_tensor(make_smem_ptr(storage.smem_a2.data()), SmemLayoutRow{});
        Tensor sB1 = make_tensor(make_smem_ptr(storage.smem_b1.data()), SmemLayoutCol{});
        Tensor sB2 = make_tensor(make_smem_ptr(storage.smem_b2.data()), SmemLayoutCol{});
        auto [tA1g, tA1s] = tma_partition(params.tma_a1, group_modes<0, 2>(sA1),
                                          group_modes<0, 2>(tile_at<kBlockM>(params, params.tma_a1,
                                                                              tile.row_start, bidh, bidb)));
        auto [tA2g, tA2s] = tma_partition(params.tma_a2, group_modes<0, 2>(sA2),
                                          group_modes<0, 2>(tile_at<kBlockM>(params, params.tma_a2,
                                                                              tile.row_start, bidh, bidb)));
        pipeline_row.producer_acquire(row_write);
        auto* row_barrier = pipeline_row.producer_get_barrier(row_write);
        copy(params.tma_a1.with(*row_barrier, 0, TMA::CacheHintSm90::EVICT_FIRST), tA1g, tA1s);
        copy(params.tma_a2.with(*row_barrier, 0, TMA::CacheHintSm90::EVICT_FIRST), tA2g, tA2s);
        ++row_write;

        int const* col_start = params.mask.col_start + tile.first;
        CUTLASS_PRAGMA_NO_UNROLL
        for (int i = 0; i < tile.count; ++i) {
            int const col = __ldg(col_start + i);
            auto [tB1g, tB1s] = tma_partition(params.tma_b1, group_modes<0, 2>(sB1),
                                              group_modes<0, 2>(tile_at<kBlockN>(params, params.tma_b1, col,
                                                                                  bidh, bidb)));
            auto [tB2g, tB2s] = tma_partition(params.tma_b2, group_modes<0, 2>(sB2),
                                              group_modes<0, 2>(tile_at<kBlockN>(params, params.tma_b2, col,
                                                                                  bidh, bidb)));
            pipeline_col.producer_acquire(col_write);
            auto* col_barrier = pipeline_col.producer_get_barrier(col_write);
            copy(params.tma_b1.with(*col_barrier, 0, TMA::CacheHintSm90::EVICT_LAST), tB1g,
                 tB1s(_, col_write.index()));
            copy(params.tma_b2.with(*col_barrier, 0, TMA::CacheHintSm90::EVICT_LAST), tB2g,
                 tB2s(_, col_write.index()));
            if constexpr (!kDQPass) { prefetch_column_stats(params, col, bidh, bidb); }
            ++col_write;
        }
    }

    // LSE and delta of a column tile into this SM's L1, a few tiles before the consumers read them (each consumer
    // thread loads 16 of the 64 values of each): their first loads would otherwise wait for L2.
    CUTLASS_DEVICE static void prefetch_column_stats(Params const& params, int col, int bidh, int bidb) {
        int const seqlen = get<0>(params.shape);
        int64_t const plane = (int64_t(bidb) * get<2>(params.shape) + bidh) * seqlen;
        int const last = min(col + kBlockN, seqlen) - 1;  // columns past L are never loaded
        if (last < col) { return; }
        for (float const* base : {params.lse_log2 + plane, params.delta + plane}) {
            uintptr_t const end = reinterpret_cast<uintptr_t>(base + last);
            for (uintptr_t line = reinterpret_cast<uintptr_t>(base + col) & ~uintptr_t(127); line <= end; line += 128) {
                asm volatile("prefetch.global.L1 [%0];" ::"l"(line));
            }
        }
    }

    // Consumers: accumulate acc1 (and acc2) of this work tile; both must be zero on entry. tile.count > 0.
    template <class FrgAcc>
    CUTLASS_DEVICE void mma(Params const& params, PipelineRow& pipeline_row, PipelineCol& pipeline_col,
                            PipelineStateRow& row_read, PipelineStateCol& col_read, FrgAcc& acc1, FrgAcc& acc2,
                            Mask& mask, int thread_idx, TensorStorage& storage, RowTile const& tile, int bidh,
                            int bidb) {
        int const seqlen = get<0>(params.shape);
        int const heads = get<2>(params.shape);
        int64_t const bh = int64_t(bidb) * heads + bidh;
        int64_t const plane = bh * seqlen;  // (B, H, L) offset of this head
        float const* lse_log2 = params.lse_log2 + plane;
        float const* delta = params.delta + plane;
        int const* col_start = params.mask.col_start + tile.first;
        int const* col_end = params.mask.col_end + tile.first;
        if (tile.num_full < tile.count) { mask.load_rows(tile.row_start); }

        Tensor sA1 = make_tensor(make_smem_ptr(storage.smem_a1.data()), SmemLayoutRow{});
        Tensor sA2 = make_tensor(make_smem_ptr(storage.smem_a2.data()), SmemLayoutRow{});
        Tensor sB1 = make_tensor(make_smem_ptr(storage.smem_b1.data()), SmemLayoutCol{});
        Tensor sB2 = make_tensor(make_smem_ptr(storage.smem_b2.data()), SmemLayoutCol{});
        Tensor sB1t = make_tensor(make_smem_ptr(storage.smem_b1.data()), SmemLayoutColT{});
        Tensor sB2t = make_tensor(make_smem_ptr(storage.smem_b2.data()), SmemLayoutColT{});

        int const wg = __shfl_sync(0xffffffff, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
        TiledMmaSdP tiled_mma_sdp;
        TiledMmaAcc tiled_mma_acc;
        // Shared-memory operands are the same for all threads of a warpgroup: slice by warpgroup.
        auto wg_mma_sdp = tiled_mma_sdp.get_slice(wg * cutlass::NumThreadsPerWarpGroup);
        auto wg_mma_acc = tiled_mma_acc.get_slice(wg * cutlass::NumThreadsPerWarpGroup);
        Tensor tSrA1 = wg_mma_sdp.partition_fragment_A(sA1);    // (MMA, MMA_M, MMA_K)
        Tensor tSrA2 = wg_mma_sdp.partition_fragment_A(sA2);
        Tensor tSrB1 = wg_mma_sdp.partition_fragment_B(sB1);    // (MMA, MMA_N, MMA_K, PIPE)
        Tensor tSrB2 = wg_mma_sdp.partition_fragment_B(sB2);
        Tensor tAccB1 = wg_mma_acc.partition_fragment_B(sB1t);  // (MMA, MMA_N, MMA_K, PIPE)
        Tensor tAccB2 = wg_mma_acc.partition_fragment_B(sB2t);

        Tensor tSrS = partition_fragment_C(tiled_mma_sdp, select<0, 1>(TileShape{}));  // ((2, 2, BN/8), 1, 1)
        Tensor tSrdP = partition_fragment_C(tiled_mma_sdp, select<0, 1>(TileShape{}));
        Tensor tSrS_rc = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));          // (rows, cols)
        Tensor tSrdP_rc = make_tensor(tSrdP.data(), acc_rowcol(tSrdP.layout()));
        Tensor tAccP = make_tensor<Element>(acc_as_operand_a(tSrS.layout()));            // ((2, 2, 2), 1, BN/16)
        Tensor tAccdS = make_tensor<Element>(acc_as_operand_a(tSrS.layout()));
        constexpr int kRows = decltype(size<0>(tSrS_rc))::value;  // 2
        constexpr int kCols = decltype(size<1>(tSrS_rc))::value;  // BN / 4

        // Row / column inside the tile of this thread's accumulator values.
        Tensor tScS = tiled_mma_sdp.get_thread_slice(thread_idx).partition_C(
            make_identity_tensor(select<0, 1>(TileShape{})));
        Tensor tScS_rc = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));

        // Rows of this thread that are computed but owned by another tile: they must add nothing to dQ.
        bool row_dropped[kRows];
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
            row_dropped[r] = kAtomicDQ && tile.row_start + get<0>(tScS_rc(r, 0)) >= tile.row_end;
        }
        bool const any_dropped = kAtomicDQ && tile.row_end - tile.row_start < kBlockM;

        // LSE and delta of the rows (dQ pass: once) or of the columns (dK/dV: per column tile); +inf / 0 past L.
        float lse_r[kDQPass ? kRows : kCols];
        float delta_r[kDQPass ? kRows : kCols];
        auto load_stats = [&](int base, auto coord_of, int n) {
            CUTLASS_PRAGMA_UNROLL
            for (int j = 0; j < n; ++j) {
                int const pos = base + coord_of(j);
                bool const inside = pos < seqlen;
                lse_r[j] = inside ? __ldg(lse_log2 + pos) : INFINITY;
                delta_r[j] = inside ? __ldg(delta + pos) : 0.f;
            }
        };
        if constexpr (kDQPass) {
            load_stats(tile.row_start, [&](int r) { return get<0>(tScS_rc(r, 0)); }, kRows);
        }

        auto convert = [](auto const& acc, auto& out) {  // fp32 accumulator → 16-bit operand registers
            constexpr int N = decltype(size(acc))::value;
            using Converter = cutlass::NumericArrayConverter<Element, float, N>;
            *reinterpret_cast<cutlass::Array<Element, N>*>(raw_pointer_cast(out.data())) =
                Converter{}(*reinterpret_cast<cutlass::Array<float, N> const*>(raw_pointer_cast(acc.data())));
        };

        pipeline_row.consumer_wait(row_read);
        PipelineStateCol prev_read = col_read;  // kOverlapAcc: the stage still read by the previous acc wgmma
        CUTLASS_PRAGMA_NO_UNROLL
        for (int i = 0; i < tile.count; ++i) {
            int const col0 = __ldg(col_start + i);
            if constexpr (!kDQPass) {
                load_stats(col0, [&](int c) { return get<1>(tScS_rc(0, c)); }, kCols);
            }
            int const stage = col_read.index();
            pipeline_col.consumer_wait(col_read);
            gemm</*zero_init=*/true, /*wg_wait=*/-1>(tiled_mma_sdp, tSrA1, tSrB1(_, _, _, stage), tSrS);
            gemm</*zero_init=*/true, /*wg_wait=*/-1>(tiled_mma_sdp, tSrA2, tSrB2(_, _, _, stage), tSrdP);
            warpgroup_wait<1>();  // S done, and everything issued before it (groups complete in order)
            warpgroup_fence_operand(tSrS);
            if constexpr (kOverlapAcc) {
                // The previous tile's acc wgmma have completed: their P/dS registers and stage are free.
                if constexpr (kHasAcc2) { warpgroup_fence_operand(tAccP); }
                warpgroup_fence_operand(tAccdS);
                if (i > 0) { pipeline_col.consumer_release(prev_read); }
            }
            if (i >= tile.num_full) { mask.before_softmax(tSrS_rc, ColTile{col0, __ldg(col_end + i)}); }
            float const scale_log2 = params.softmax_scale_log2;
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
                CUTLASS_PRAGMA_UNROLL
                for (int c = 0; c < kCols; ++c) {
                    float const lse = kDQPass ? lse_r[r] : lse_r[c];
                    float const p = exp2f(fmaf(tSrS_rc(r, c), scale_log2, -lse));
                    tSrS_rc(r, c) = any_dropped && row_dropped[r] ? 0.f : p;
                }
            }
            // dV += P·B2 goes to the tensor cores before dS is computed, so they stay busy meanwhile.
            if constexpr (kHasAcc2) {
                convert(tSrS, tAccP);
                gemm</*zero_init=*/false, /*wg_wait=*/-1>(tiled_mma_acc, tAccP, tAccB2(_, _, _, stage), acc2);
            }
            warpgroup_wait<kHasAcc2 ? 1 : 0>();  // dP done (dV may still run)
            warpgroup_fence_operand(tSrdP);
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
                CUTLASS_PRAGMA_UNROLL
                for (int c = 0; c < kCols; ++c) {
                    float const d = kDQPass ? delta_r[r] : delta_r[c];
                    tSrdP_rc(r, c) = tSrS_rc(r, c) * (tSrdP_rc(r, c) - d);
                }
            }
            convert(tSrdP, tAccdS);
            if constexpr (kDQSplit) {
                ds_to_smem(storage, tAccdS, thread_idx);
                if constexpr (kOverlapAcc) { dq_update_split(params, storage, thread_idx, col0, seqlen, bh, i > 0); }
            }
            gemm</*zero_init=*/false, /*wg_wait=*/-1>(tiled_mma_acc, tAccdS, tAccB1(_, _, _, stage), acc1);
            if constexpr (kDQSplit && !kOverlapAcc) {
                // dK/dV first: P and dS registers die before the dQ accumulator is live (D = 128 spilled 108
                // bytes with both in flight).
                warpgroup_wait<0>();
                dq_update_split(params, storage, thread_idx, col0, seqlen, bh, i > 0);
            } else if constexpr (kAtomicDQ && !kDQSplit) {
                dq_update(params, storage, tAccdS, thread_idx, col0, seqlen, bh);
            }
            if constexpr (kOverlapAcc) {
                prev_read = col_read;
            } else {
                warpgroup_wait<0>();
                warpgroup_fence_operand(acc1);
                if constexpr (kHasAcc2) { warpgroup_fence_operand(acc2); }
                pipeline_col.consumer_release(col_read);
            }
            ++col_read;
        }
        if constexpr (kOverlapAcc) {
            warpgroup_wait<0>();
            warpgroup_fence_operand(acc1);
            if constexpr (kHasAcc2) { warpgroup_fence_operand(acc2); }
            pipeline_col.consumer_release(prev_read);
        }
        pipeline_row.consumer_release(row_read);
        ++row_read;
        if constexpr (kDQBulk) {
            // The last bulk reduce-add must have read its shared-memory block before the CTA exits, and be complete
            // before the postprocess kernel reads dq_accum.
            if (thread_idx % cutlass::NumThreadsPerWarpGroup == 0) {
                asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
            }
        }
    }

    // This thread's dS values (16-bit, in the S accumulator's order) into the dS tile (rows, cols) by stmatrix, made
    // visible to wgmma. Callers synchronise around it.
    template <class FrgDS>
    CUTLASS_DEVICE static void ds_stmatrix(TensorStorage& storage, FrgDS const& tAccdS, int thread_idx) {
        using LayoutAccS = decltype(partition_fragment_C(TiledMmaSdP{}, select<0, 1>(TileShape{})).layout());
        Tensor sDS = make_tensor(make_smem_ptr(storage.smem_ds.data()), SmemLayoutDS{});  // (rows, cols)
        auto smem_tiled_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, TiledMmaSdP{});
        auto smem_thr_copy = smem_tiled_copy.get_thread_slice(thread_idx);
        Tensor tDSr = make_tensor(tAccdS.data(), LayoutAccS{});
        copy(smem_tiled_copy, smem_thr_copy.retile_S(tDSr), smem_thr_copy.partition_D(sDS));
        cutlass::arch::fence_view_async_shared();  // stmatrix (generic proxy) → wgmma reads (async proxy)
    }

    // dQ_partial (cols, D) = dS_wᵀ · A1_w over this warpgroup's 64 rows (keys), added to dq_accum with fp32 atomics
    // (red.global.add.v2.f32). dS_w goes through this warpgroup's 64-row slab of shared memory.
    template <class FrgDS>
    CUTLASS_DEVICE void dq_update(Params const& params, TensorStorage& storage, FrgDS const& tAccdS,
                                  int thread_idx, int col0, int seqlen, int64_t bh) {
        int const wg = thread_idx / cutlass::NumThreadsPerWarpGroup;
        int const wg_thread = thread_idx % cutlass::NumThreadsPerWarpGroup;
        uint32_t const barrier = uint32_t(BwdNamedBarriers::DSWG1) + wg;
        Tensor sDSt = make_tensor(make_smem_ptr(storage.smem_ds.data()), SmemLayoutDSt{});  // (cols, rows)
        Tensor sA1t = make_tensor(make_smem_ptr(storage.smem_a1.data()), SmemLayoutRowT{}); // (D, rows)

        // The previous column tile's dQ wgmma of every warp of this warpgroup has read the slab.
        cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, barrier);
        ds_stmatrix(storage, tAccdS, thread_idx);
        cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, barrier);

        TiledMmaDQ tiled_mma_dq;
        auto thr_mma_dq = tiled_mma_dq.get_slice(wg_thread);
        Tensor sDSt_w = local_tile(sDSt, Shape<Int<kBlockN>, _64>{}, make_coord(_0{}, wg));  // (cols, 64)
        Tensor tDQrA = thr_mma_dq.partition_fragment_A(sDSt_w);
        Tensor tDQc = thr_mma_dq.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kDQChunk>>{}));
        float* dq_accum = params.dq_accum + bh * (seqlen + kBlockN) * kHeadDim;
        CUTLASS_PRAGMA_UNROLL
        for (int chunk = 0; chunk < kDQChunks; ++chunk) {
            Tensor sA1t_w = local_tile(sA1t, Shape<Int<kDQChunk>, _64>{}, make_coord(chunk, wg));  // (64 dims, 64)
            Tensor tDQrB = thr_mma_dq.partition_fragment_B(sA1t_w);
            Tensor tDQrDQ = partition_fragment_C(tiled_mma_dq, Shape<Int<kBlockN>, Int<kDQChunk>>{});
            gemm</*zero_init=*/true, /*wg_wait=*/0>(tiled_mma_dq, tDQrA, tDQrB, tDQrDQ);
            // Accumulator values come in pairs of adjacent columns: one 8-byte vector atomic each.
            CUTLASS_PRAGMA_UNROLL
            for (int v = 0; v < size(tDQrDQ); v += 2) {
                int const col = col0 + get<0>(tDQc(v));
                if (col < seqlen) {
                    float* dst = dq_accum + int64_t(col) * kHeadDim + chunk * kDQChunk + get<1>(tDQc(v));
                    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(tDQrDQ(v), tDQrDQ(v + 1)));
                }
            }
        }
    }

    // Split dQ, first half: both warpgroups' dS into the shared-memory tile (rows, cols).
    template <class FrgDS>
    CUTLASS_DEVICE void ds_to_smem(TensorStorage& storage, FrgDS const& tAccdS, int thread_idx) {
        // The previous column tile's dQ wgmma of both warpgroups has read the tile.
        cutlass::arch::NamedBarrier::sync(NumMmaThreads, uint32_t(BwdNamedBarriers::DSAll));
        ds_stmatrix(storage, tAccdS, thread_idx);
    }

    // Split dQ, second half: dQ (cols, D) = dSᵀ · A1 over all kBlockM rows (keys), warpgroup w computing head dims
    // [w·D/2, (w+1)·D/2), added to dq_accum with fp32 atomics, or by one bulk reduce-add per warpgroup.
    // bulk_pending: a previous column tile's bulk reduce-add may still read smem_dq.
    CUTLASS_DEVICE void dq_update_split(Params const& params, TensorStorage& storage, int thread_idx, int col0,
                                        int seqlen, int64_t bh, bool bulk_pending) {
        Tensor sDSt = make_tensor(make_smem_ptr(storage.smem_ds.data()), SmemLayoutDSt{});  // (cols, rows)
        Tensor sA1t = make_tensor(make_smem_ptr(storage.smem_a1.data()), SmemLayoutRowT{}); // (D, rows)
        cutlass::arch::NamedBarrier::sync(NumMmaThreads, uint32_t(BwdNamedBarriers::DSAll));  // dS tile complete

        TiledMmaDQSplit tiled_mma_dq;
        int const wg = thread_idx / cutlass::NumThreadsPerWarpGroup;
        auto wg_mma_dq = tiled_mma_dq.get_slice(wg * cutlass::NumThreadsPerWarpGroup);
        Tensor tDQrA = wg_mma_dq.partition_fragment_A(sDSt);  // (MMA, MMA_M, MMA_K)
        Tensor tDQrB = wg_mma_dq.partition_fragment_B(sA1t);  // (MMA, MMA_N, MMA_K)
        Tensor tDQrDQ = partition_fragment_C(tiled_mma_dq, Shape<Int<kBlockN>, Int<kHeadDim>>{});
        Tensor tDQc = tiled_mma_dq.get_thread_slice(thread_idx).partition_C(
            make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
        gemm</*zero_init=*/true, /*wg_wait=*/0>(tiled_mma_dq, tDQrA, tDQrB, tDQrDQ);
        if constexpr (kDQBulk) {
            dq_bulk_add(params, storage, tDQrDQ, tDQc, thread_idx, col0, seqlen, bh, bulk_pending);
        } else {
            float* dq_accum = params.dq_accum + bh * (seqlen + kBlockN) * kHeadDim;
            // Accumulator values come in pairs of adjacent columns: one 8-byte vector atomic each.
            CUTLASS_PRAGMA_UNROLL
            for (int v = 0; v < size(tDQrDQ); v += 2) {
                int const col = col0 + get<0>(tDQc(v));
                if (col < seqlen) {
                    float* dst = dq_accum + int64_t(col) * kHeadDim + get<1>(tDQc(v));
                    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(tDQrDQ(v), tDQrDQ(v + 1)));
                }
            }
        }
    }

    // This warpgroup's dQ block (kBlockN columns, D/2 head dims from w·D/2) → smem_dq (row-major fp32) → one
    // cp.reduce.async.bulk add.f32 into its contiguous block of dq_accum, issued by the warpgroup's first thread.
    template <class FrgDQ, class CoordDQ>
    CUTLASS_DEVICE void dq_bulk_add(Params const& params, TensorStorage& storage, FrgDQ const& tDQrDQ,
                                    CoordDQ const& tDQc, int thread_idx, int col0, int seqlen, int64_t bh,
                                    bool bulk_pending) {
        constexpr int kDims = kHeadDim / NumMmaWarpGroups;  // head dims of this warpgroup
        constexpr uint32_t kBytes = kBlockN * kDims * sizeof(float);
        int const wg = thread_idx / cutlass::NumThreadsPerWarpGroup;
        bool const issuer = thread_idx % cutlass::NumThreadsPerWarpGroup == 0;
        uint32_t const barrier = uint32_t(BwdNamedBarriers::DSWG1) + wg;
        float* block = storage.smem_dq.data() + wg * kBlockN * kDims;
        if (bulk_pending) {  // the previous reduce-add has read the block before anyone overwrites it
            if (issuer) { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
            cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, barrier);
        }
        CUTLASS_PRAGMA_UNROLL
        for (int v = 0; v < size(tDQrDQ); v += 2) {
            int const col = get<0>(tDQc(v));
            int const dim = get<1>(tDQc(v)) - wg * kDims;
            *reinterpret_cast<float2*>(block + col * kDims + dim) = make_float2(tDQrDQ(v), tDQrDQ(v + 1));
        }
        cutlass::arch::fence_view_async_shared();  // generic-proxy writes → the bulk copy (async proxy)
        cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, barrier);
        if (issuer) {
            int64_t const rows = seqlen + kBlockN;
            float* dst = params.dq_accum + ((bh * NumMmaWarpGroups + wg) * rows + col0) * kDims;
            asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                         :: "l"(dst), "r"(cute::cast_smem_ptr_to_uint(block)), "r"(kBytes) : "memory");
            asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        }
    }
};

}  // namespace hmar
