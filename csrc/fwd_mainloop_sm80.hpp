// Forward mainloop collective for sm80 (FlashAttention-2 style): every warp computes 16-row slices of the
// CTA's kBlockM query rows against each visited kBlockN-key tile with mma.sync, operands fed from swizzled shared
// memory by ldmatrix, tiles brought in by cp.async.
//
// K and V go through a kStages = 2 cp.async ring: the tiles of visit i + 2 are requested as soon as visit i is done
// with its stage, so each load has a whole visit (two GEMMs and a softmax) to land. Rows past L (or past the TileMask's run) are zero-filled, so a
// partial tile's invisible keys contribute exact zeros. The column tiles come from the TileMask (mask.h): full
// ones first with no element mask, then partial ones through the mask policy's before_softmax hook.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "mask.h"
#include "softmax.h"
#include "utils_sm80.h"

namespace hmar {

using namespace cute;

template <class Element_, int kBlockM_, int kBlockN_, int kHeadDim_, int kWarps_>
struct CollectiveMainloopFwdSm80 {
    using Element = Element_;
    static constexpr int kBlockM = kBlockM_;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kThreads = kWarps_ * 32;
    static constexpr int kStages = 2;
    static_assert(kBlockM % (16 * kWarps_) == 0 && kBlockN % 16 == 0 && kHeadDim % 64 == 0);

    using TiledMma = TiledMmaSm80<Element, kWarps_, 1>;
    using SmemLayoutQ = SmemLayoutSm80<Element, kBlockM, kHeadDim>;
    using SmemLayoutKV = SmemLayoutSm80<Element, kBlockN, kHeadDim>;
    using SmemLayoutVt = decltype(transposed(SmemLayoutKV{}));  // (D, kBlockN): V as the B operand of P·V
    using GmemCopy = GmemTiledCopySm80<Element, kThreads>;
    using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
    using SmemCopyAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Element>;

    using Mask = BlockSparseMask<kBlockM, kBlockN, TiledMma>;
    using Softmax = OnlineSoftmax<Mask::kRows>;

    struct TensorStorage {
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 128> smem_q;  // Q, then O in the epilogue
        cute::array_aligned<Element, kStages * cute::cosize_v<SmemLayoutKV>, 128> smem_k;
        cute::array_aligned<Element, kStages * cute::cosize_v<SmemLayoutKV>, 128> smem_v;
    };
    static constexpr int kKVSize = cute::cosize_v<SmemLayoutKV>;

    struct Params {
        Element const* q;
        Element const* k;
        Element const* v;
        int64_t q_batch_stride, q_head_stride, q_row_stride;
        int64_t k_batch_stride, k_head_stride, k_row_stride;
        int64_t v_batch_stride, v_head_stride, v_row_stride;
        int seqlen;
        float softmax_scale_log2;
        TileMaskParams mask;
    };

    // Accumulates the unnormalised O of one row tile into tOrO (zeroed by the caller) and the row statistics into
    // softmax. Leaves cp.async groups possibly in flight only for a tile with no visits (Q): the epilogue waits.
    template <class FrgO>
    CUTLASS_DEVICE void mma(Params const& p, TensorStorage& smem, RowTile const& tile, int bidh, int bidb,
                            int thread_idx, FrgO& tOrO, Softmax& softmax, Mask& mask) const {
        Tensor sQ = make_tensor(make_smem_ptr(smem.smem_q.data()), SmemLayoutQ{});
        Element const* q = p.q + bidb * p.q_batch_stride + bidh * p.q_head_stride;
        Element const* k = p.k + bidb * p.k_batch_stride + bidh * p.k_head_stride;
        Element const* v = p.v + bidb * p.v_batch_stride + bidh * p.v_head_stride;
        int const* col_start = p.mask.col_start + tile.first;
        int const* col_end = p.mask.col_end + tile.first;

        GmemCopy gmem_copy;
        TiledMma tiled_mma;
        auto thr_mma = tiled_mma.get_thread_slice(thread_idx);
        Tensor tSrQ = thr_mma.partition_fragment_A(sQ);  // (MMA, MMA_M, MMA_K)
        Tensor tSrK = thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem.smem_k.data()), SmemLayoutKV{}));
        Tensor tOrVt = thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem.smem_v.data()), SmemLayoutVt{}));
        auto copy_q = make_tiled_copy_A(SmemCopyAtom{}, tiled_mma);
        auto thr_copy_q = copy_q.get_thread_slice(thread_idx);
        Tensor tSsQ = thr_copy_q.partition_S(sQ);
        auto copy_k = make_tiled_copy_B(SmemCopyAtom{}, tiled_mma);
        auto thr_copy_k = copy_k.get_thread_slice(thread_idx);
        auto copy_v = make_tiled_copy_B(SmemCopyAtomT{}, tiled_mma);
        auto thr_copy_v = copy_v.get_thread_slice(thread_idx);

        // K and V of visit `visit` into ring stage `stage` (one cp.async group per visit, committed by the caller).
        auto load_kv = [&](int visit, int stage) {
            int const start = __ldg(col_start + visit);
            Tensor sK = make_tensor(make_smem_ptr(smem.smem_k.data() + stage * kKVSize), SmemLayoutKV{});
            Tensor sV = make_tensor(make_smem_ptr(smem.smem_v.data() + stage * kKVSize), SmemLayoutKV{});
            load_rows_async<kBlockN, kHeadDim>(gmem_copy, thread_idx, k, start, p.k_row_stride, p.seqlen - start, sK);
            load_rows_async<kBlockN, kHeadDim>(gmem_copy, thread_idx, v, start, p.v_row_stride, p.seqlen - start, sV);
        };
        load_rows_async<kBlockM, kHeadDim>(gmem_copy, thread_idx, q, tile.row_start, p.q_row_stride,
                                           p.seqlen - tile.row_start, sQ);
        if (tile.count > 0) { load_kv(0, 0); }
        cute::cp_async_fence();
        if (tile.count > 1) { load_kv(1, 1); }
        cute::cp_async_fence();
        if (tile.num_full < tile.count) { mask.load_rows(tile.row_start); }

        CUTLASS_PRAGMA_NO_UNROLL
        for (int i = 0; i < tile.count; ++i) {
            int const stage = i % kStages;
            ColTile const col{__ldg(col_start + i), __ldg(col_end + i)};
            cute::cp_async_wait<kStages - 1>();  // the group of visit i (every older one too) has landed ...
            __syncthreads();                      // ... for every thread
            Tensor sK = make_tensor(make_smem_ptr(smem.smem_k.data() + stage * kKVSize), SmemLayoutKV{});
            Tensor sVt = make_tensor(make_smem_ptr(smem.smem_v.data() + stage * kKVSize), SmemLayoutVt{});

            Tensor tSrS = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // S = Q K_iᵀ
            clear(tSrS);
            gemm_ss(tiled_mma, tSrS, tSrQ, tSrK, tSsQ, thr_copy_k.partition_S(sK), copy_q, copy_k, thr_copy_q,
                    thr_copy_k);
            Tensor s = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));  // (rows, cols)
            float o_scale[Mask::kRows];
            if (i >= tile.num_full) {
                mask.before_softmax(s, col);
                softmax.template step<true>(s, o_scale);
            } else {
                softmax.template step<false>(s, o_scale);
            }
            Tensor o = make_tensor(tOrO.data(), acc_rowcol(tOrO.layout()));
            Softmax::rescale(o, o_scale);
            Tensor rP = convert_fragment<Element>(tSrS);
            Tensor tOrP = make_tensor(rP.data(), acc_as_operand_a_sm80(rP.layout()));  // P as the A operand
            gemm_rs(tiled_mma, tOrO, tOrP, tOrVt, thr_copy_v.partition_S(sVt), copy_v, thr_copy_v);  // O += P V_i

            __syncthreads();  // every thread is done with this stage
            if (i + kStages < tile.count) { load_kv(i + kStages, stage); }
            cute::cp_async_fence();  // one group per visit, empty at the end, so the wait count stays exact
        }
    }
};

}  // namespace hmar
