// Backward mainloop collective for sm80: one CTA owns a key tile (kBlockN keys of one batch · head) and walks the
// query tiles that attend it, from the TileMask of the transposed pattern (rows = keys, columns = queries), so
// the forward's mask policy applies unchanged with the roles swapped. Everything is computed transposed, keys
// along the mma rows, so that P and dS stay in registers as the A operand of the dV and dK GEMMs:
//
//   Sᵀ = K Qᵀ,  Pᵀ = exp2(Sᵀ·scale_log2 − lse₂[q]),  dPᵀ = V dOᵀ,  dSᵀ = Pᵀ ∘ (dPᵀ − delta[q])
//   dV += Pᵀ dO,  dK += dSᵀ Q   (registers, scaled by softmax_scale at the end for dK)
//   dQ[q] += dS K               (dSᵀ through shared memory, fp32 atomics into dq_accum; the postprocess scales)
//
// lse₂ = lse·log2(e) per query (column); a query past L or one that sees no key (lse = -inf) gets +inf, so its P
// is 0. Key rows the CTA computes but does not own (past row_end: another CTA's, or past L) are masked in every
// tile, so they add nothing to dQ. Q and dO go through a 2-stage cp.async ring: the next query tile loads under
// the current one's five GEMMs.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "mask.h"
#include "utils_sm80.h"

namespace hmar {

using namespace cute;

template <class Element_, int kBlockN_, int kBlockM_, int kHeadDim_, int kWarps_>
struct CollectiveMainloopBwdSm80 {
    using Element = Element_;
    static constexpr int kBlockN = kBlockN_;  // keys per CTA
    static constexpr int kBlockM = kBlockM_;  // queries per step
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kThreads = kWarps_ * 32;
    static_assert(kBlockN == 16 * kWarps_, "one 16-key slice per warp: Pᵀ and dSᵀ rows match the dK/dV A operand");
    static_assert(kWarps_ % 2 == 0 && kBlockM == 16 * (kWarps_ / 2) && kHeadDim % 64 == 0 && kBlockM % 64 == 0);

    using TiledMmaSdp = TiledMmaSm80<Element, kWarps_, 1>;     // Sᵀ, dPᵀ (kBlockN, kBlockM); dK, dV (kBlockN, D)
    using TiledMmaDq = TiledMmaSm80<Element, kWarps_ / 2, 2>;  // dQ (kBlockM, D)
    using SmemLayoutKV = SmemLayoutSm80<Element, kBlockN, kHeadDim>;
    using SmemLayoutKt = decltype(transposed(SmemLayoutKV{}));  // (D, kBlockN)
    using SmemLayoutQ = SmemLayoutSm80<Element, kBlockM, kHeadDim>;
    using SmemLayoutQt = decltype(transposed(SmemLayoutQ{}));   // (D, kBlockM)
    using SmemLayoutDs = SmemLayoutSm80<Element, kBlockN, kBlockM>;
    using SmemLayoutDst = decltype(transposed(SmemLayoutDs{}));  // (kBlockM, kBlockN)
    using GmemCopy = GmemTiledCopySm80<Element, kThreads>;
    using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
    using SmemCopyAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
    using Mask = BlockSparseMask<kBlockN, kBlockM, TiledMmaSdp>;
    static constexpr int kQSize = cute::cosize_v<SmemLayoutQ>;

    struct TensorStorage {
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutKV>, 128> smem_k;  // K, then dK in the epilogue
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutKV>, 128> smem_v;  // V, then dV
        cute::array_aligned<Element, 2 * kQSize, 128> smem_q;                    // 2 stages
        cute::array_aligned<Element, 2 * kQSize, 128> smem_do;
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutDs>, 128> smem_ds;
    };

    struct Params {
        Element const* q;
        Element const* k;
        Element const* v;
        Element const* dout;
        int64_t q_batch_stride, q_head_stride, q_row_stride;
        int64_t k_batch_stride, k_head_stride, k_row_stride;
        int64_t v_batch_stride, v_head_stride, v_row_stride;
        int64_t do_batch_stride, do_head_stride, do_row_stride;
        float const* lse;
        float const* delta;
        float* dq_accum;
        int seqlen, heads;
        float softmax_scale_log2;
        TileMaskParams mask;  // the transposed pattern's
    };

    // Accumulates dK (unscaled) and dV of one key tile into tdKrdK, tdVrdV (zeroed by the caller), and this tile's
    // share of dQ into dq_accum.
    template <class FrgKV>
    CUTLASS_DEVICE void mma(Params const& p, TensorStorage& smem, RowTile const& tile, int bidh, int bidb,
                            int thread_idx, FrgKV& tdKrdK, FrgKV& tdVrdV, Mask& mask) const {
        Tensor sK = make_tensor(make_smem_ptr(smem.smem_k.data()), SmemLayoutKV{});
        Tensor sV = make_tensor(make_smem_ptr(smem.smem_v.data()), SmemLayoutKV{});
        Tensor sKt = make_tensor(make_smem_ptr(smem.smem_k.data()), SmemLayoutKt{});
        Tensor sDs = make_tensor(make_smem_ptr(smem.smem_ds.data()), SmemLayoutDs{});
        Tensor sDst = make_tensor(make_smem_ptr(smem.smem_ds.data()), SmemLayoutDst{});

        int64_t const plane = (int64_t(bidb) * p.heads + bidh) * p.seqlen;  // (b, h) row offset of lse, delta, dQ
        float const* lse = p.lse + plane;
        float const* delta_row = p.delta + plane;
        float* dq_accum = p.dq_accum + plane * kHeadDim;
        Element const* q = p.q + bidb * p.q_batch_stride + bidh * p.q_head_stride;
        Element const* k = p.k + bidb * p.k_batch_stride + bidh * p.k_head_stride;
        Element const* v = p.v + bidb * p.v_batch_stride + bidh * p.v_head_stride;
        Element const* dout = p.dout + bidb * p.do_batch_stride + bidh * p.do_head_stride;
        int const* col_start = p.mask.col_start + tile.first;
        int const* col_end = p.mask.col_end + tile.first;

        GmemCopy gmem_copy;
        TiledMmaSdp tiled_mma;
        TiledMmaDq tiled_mma_dq;
        auto thr_mma = tiled_mma.get_thread_slice(thread_idx);
        auto thr_mma_dq = tiled_mma_dq.get_thread_slice(thread_idx);
        auto copy_a = make_tiled_copy_A(SmemCopyAtom{}, tiled_mma);   // K, V as A
        auto thr_copy_a = copy_a.get_thread_slice(thread_idx);
        auto copy_b = make_tiled_copy_B(SmemCopyAtom{}, tiled_mma);   // Q, dO as B of Sᵀ, dPᵀ
        auto thr_copy_b = copy_b.get_thread_slice(thread_idx);
        auto copy_bt = make_tiled_copy_B(SmemCopyAtomT{}, tiled_mma);  // dOᵀ, Qᵀ as B of dV, dK
        auto thr_copy_bt = copy_bt.get_thread_slice(thread_idx);
        auto copy_dq_a = make_tiled_copy_A(SmemCopyAtomT{}, tiled_mma_dq);  // dS from the stored dSᵀ
        auto thr_copy_dq_a = copy_dq_a.get_thread_slice(thread_idx);
        auto copy_dq_b = make_tiled_copy_B(SmemCopyAtomT{}, tiled_mma_dq);  // Kᵀ
        auto thr_copy_dq_b = copy_dq_b.get_thread_slice(thread_idx);

        Tensor tSrK = thr_mma.partition_fragment_A(sK);  // (MMA, MMA_N, MMA_K)
        Tensor tSrV = thr_mma.partition_fragment_A(sV);
        Tensor tSsK = thr_copy_a.partition_S(sK);
        Tensor tSsV = thr_copy_a.partition_S(sV);
        Tensor tdQrDs = thr_mma_dq.partition_fragment_A(sDst);
        Tensor tdQsDs = thr_copy_dq_a.partition_S(sDst);
        Tensor tdQrKt = thr_mma_dq.partition_fragment_B(sKt);
        Tensor tdQsKt = thr_copy_dq_b.partition_S(sKt);
        Tensor tdQcdQ = thr_mma_dq.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
        // Column (query) coordinates of this thread's Sᵀ values
        Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{}));
        Tensor tScS_rc = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
        constexpr int kCols = decltype(size<1>(tScS_rc))::value;
        constexpr int kRows = Mask::kRows;

        auto load_q_do = [&](int stage, int start) {
            Tensor sQ = make_tensor(make_smem_ptr(smem.smem_q.data() + stage * kQSize), SmemLayoutQ{});
            Tensor sDo = make_tensor(make_smem_ptr(smem.smem_do.data() + stage * kQSize), SmemLayoutQ{});
            load_rows_async<kBlockM, kHeadDim>(gmem_copy, thread_idx, q, start, p.q_row_stride, p.seqlen - start, sQ);
            load_rows_async<kBlockM, kHeadDim>(gmem_copy, thread_idx, dout, start, p.do_row_stride, p.seqlen - start,
                                               sDo);
        };

        load_rows_async<kBlockN, kHeadDim>(gmem_copy, thread_idx, k, tile.row_start, p.k_row_stride,
                                           p.seqlen - tile.row_start, sK);
        load_rows_async<kBlockN, kHeadDim>(gmem_copy, thread_idx, v, tile.row_start, p.v_row_stride,
                                           p.seqlen - tile.row_start, sV);
        int next_start = tile.count > 0 ? __ldg(col_start) : 0;
        if (tile.count > 0) { load_q_do(0, next_start); }
        cute::cp_async_fence();

        // Key rows this CTA does not own see nothing (their dQ share would be counted twice, or is not real).
        bool const all_owned = tile.row_end - tile.row_start >= kBlockN;
        if (tile.num_full < tile.count || !all_owned) {
            mask.load_rows(tile.row_start);
            Tensor rows = make_tensor(mask.tScS.data(), acc_rowcol(mask.tScS.layout()));
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
                if (tile.row_start + get<0>(rows(r, 0)) >= tile.row_end) { mask.hi[r] = mask.lo[r]; }
            }
        }

        CUTLASS_PRAGMA_NO_UNROLL
        for (int i = 0; i < tile.count; ++i) {
            int const stage = i & 1;
            ColTile const col{next_start, __ldg(col_end + i)};
            if (i + 1 < tile.count) { next_start = __ldg(col_start + i + 1); }
            cute::cp_async_wait<0>();
            __syncthreads();  // Q_i, dO_i (and K, V) have landed; everyone is done with step i-1
            if (i + 1 < tile.count) {
                load_q_do(stage ^ 1, next_start);
                cute::cp_async_fence();
            }
            Tensor sQ = make_tensor(make_smem_ptr(smem.smem_q.data() + stage * kQSize), SmemLayoutQ{});
            Tensor sDo = make_tensor(make_smem_ptr(smem.smem_do.data() + stage * kQSize), SmemLayoutQ{});
            Tensor sQt = make_tensor(make_smem_ptr(smem.smem_q.data() + stage * kQSize), SmemLayoutQt{});
            Tensor sDot = make_tensor(make_smem_ptr(smem.smem_do.data() + stage * kQSize), SmemLayoutQt{});

            // Per-query statistics of this thread's columns (loads issued before the GEMMs hide under them).
            float lse2[kCols];
            float delta[kCols];
            CUTLASS_PRAGMA_UNROLL
            for (int c = 0; c < kCols; ++c) {
                int const query = col.start + get<1>(tScS_rc(0, c));
                float const l = query < p.seqlen ? __ldg(lse + query) : -INFINITY;
                lse2[c] = l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
                delta[c] = query < p.seqlen ? __ldg(delta_row + query) : 0.f;
            }

            Tensor tSrQ = thr_mma.partition_fragment_B(sQ);  // (MMA, MMA_M, MMA_K)
            Tensor tSsQ = thr_copy_b.partition_S(sQ);
            Tensor tSsDo = thr_copy_b.partition_S(sDo);
            Tensor tSrS = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kBlockM>>{});  // Sᵀ
            clear(tSrS);
            gemm_ss(tiled_mma, tSrS, tSrK, tSrQ, tSsK, tSsQ, copy_a, copy_b, thr_copy_a, thr_copy_b);
            Tensor tSrDp = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kBlockM>>{});  // dPᵀ
            clear(tSrDp);
            gemm_ss(tiled_mma, tSrDp, tSrV, tSrQ, tSsV, tSsDo, copy_a, copy_b, thr_copy_a, thr_copy_b);

            Tensor s = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));  // (keys, queries)
            Tensor dp = make_tensor(tSrDp.data(), acc_rowcol(tSrDp.layout()));
            if (i >= tile.num_full || !all_owned) { mask.before_softmax(s, col); }
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
                CUTLASS_PRAGMA_UNROLL
                for (int c = 0; c < kCols; ++c) {
                    float const pr = exp2f(fmaf(s(r, c), p.softmax_scale_log2, -lse2[c]));
                    s(r, c) = pr;                         // Pᵀ
                    dp(r, c) = pr * (dp(r, c) - delta[c]);  // dSᵀ
                }
            }

            // dV += Pᵀ dO, dK += dSᵀ Q: A from the registers just computed, B read transposed (ldmatrix.trans).
            Tensor rP = convert_fragment<Element>(tSrS);
            Tensor tdVrP = make_tensor(rP.data(), acc_as_operand_a_sm80(rP.layout()));
            Tensor tdVrDot = thr_mma.partition_fragment_B(sDot);
            gemm_rs(tiled_mma, tdVrdV, tdVrP, tdVrDot, thr_copy_bt.partition_S(sDot), copy_bt, thr_copy_bt);
            Tensor rDs = convert_fragment<Element>(tSrDp);
            Tensor tdKrDs = make_tensor(rDs.data(), acc_as_operand_a_sm80(rDs.layout()));
            Tensor tdKrQt = thr_mma.partition_fragment_B(sQt);
            gemm_rs(tiled_mma, tdKrdK, tdKrDs, tdKrQt, thr_copy_bt.partition_S(sQt), copy_bt, thr_copy_bt);

            // dQ share: dS K through shared memory, then fp32 atomics for the queries inside L.
            {
                auto smem_copy = make_tiled_copy_C(Copy_Atom<UniversalCopy<uint32_t>, Element>{}, tiled_mma);
                auto thr = smem_copy.get_thread_slice(thread_idx);
                copy(smem_copy, thr.retile_S(rDs), thr.partition_D(sDs));
            }
            __syncthreads();
            Tensor tdQrdQ = partition_fragment_C(tiled_mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
            clear(tdQrdQ);
            gemm_ss(tiled_mma_dq, tdQrdQ, tdQrDs, tdQrKt, tdQsDs, tdQsKt, copy_dq_a, copy_dq_b, thr_copy_dq_a,
                    thr_copy_dq_b);
            float* dq_tile = dq_accum + int64_t(col.start) * kHeadDim;
            int const queries = p.seqlen - col.start;
            CUTLASS_PRAGMA_UNROLL
            for (int j = 0; j < size(tdQrdQ); ++j) {
                auto const rc = tdQcdQ(j);
                if (get<0>(rc) < queries) { atomicAdd(dq_tile + get<0>(rc) * kHeadDim + get<1>(rc), tdQrdQ(j)); }
            }
        }
    }
};

}  // namespace hmar
