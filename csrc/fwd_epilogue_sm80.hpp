// Forward epilogue for sm80: normalised O → 16-bit → the CTA's shared-memory Q tile (32-bit stores from the mma
// accumulator layout) → 16-byte global stores of the owned rows [row_start, row_end) only; LSE (natural log, -inf
// for a row that sees nothing) straight from registers.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "utils_sm80.h"

namespace hmar {

using namespace cute;

template <class Element, int kBlockM, int kHeadDim, int kThreads, class TiledMma, class SmemLayoutO>
struct CollectiveEpilogueFwdSm80 {
    struct Params {
        Element* o;
        int64_t o_batch_stride, o_head_stride, o_row_stride;
        float* lse;  // (B, H, L) contiguous
        int seqlen, heads;
    };

    // tOrO: this thread's normalised fp32 O; lse: natural-log LSE of its rows (the acc_rowcol rows of tOrO).
    // smem_o: the CTA's (kBlockM, D) tile, free to overwrite once every thread has passed the barrier below.
    template <class FrgO, int kRows>
    CUTLASS_DEVICE void store(Params const& p, FrgO const& tOrO, float const (&lse)[kRows], Element* smem_o,
                              int thread_idx, int row_start, int row_end, int bidh, int bidb) const {
        TiledMma tiled_mma;
        Tensor tOcO = tiled_mma.get_thread_slice(thread_idx).partition_C(
            make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
        Tensor tOcO_rc = make_tensor(tOcO.data(), acc_rowcol(tOcO.layout()));
        static_assert(decltype(size<0>(tOcO_rc))::value == kRows);
        if (get<1>(tOcO_rc(0, 0)) == 0) {  // the first thread of each quad writes its rows' LSE
            float* lse_row = p.lse + (int64_t(bidb) * p.heads + bidh) * p.seqlen;
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
                int const row = row_start + get<0>(tOcO_rc(r, 0));
                if (row < row_end) { lse_row[row] = lse[r]; }
            }
        }

        Tensor sO = make_tensor(make_smem_ptr(smem_o), SmemLayoutO{});
        cute::cp_async_wait<0>();
        __syncthreads();  // every thread is done with the mainloop's shared memory (and its Q load has landed)
        fragment_to_smem<Element, TiledMma>(tOrO, sO, thread_idx);
        __syncthreads();
        smem_to_gmem_rows<kBlockM, kHeadDim, kThreads>(
            sO, p.o + bidb * p.o_batch_stride + bidh * p.o_head_stride + int64_t(row_start) * p.o_row_stride,
            p.o_row_stride, row_end - row_start, thread_idx);
    }
};

}  // namespace hmar
