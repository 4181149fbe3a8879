// Backward epilogue collective: the CTA's fp32 accumulators (rows, D) → scale → Element → global memory, only the
// rows the row tile owns ([row_start, row_end): rows past it belong to the next tile or lie past L). Each thread
// stores its adjacent column pairs directly from registers (4-byte stores; a quad covers 32 contiguous bytes of a
// row). A row tile that visits no column tile stores zeros.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "utils.h"

namespace hmar {

using namespace cute;

template <class TileShapeAcc_, class Element_, class TiledMmaAcc_, bool kHasOut2_>
struct CollectiveEpilogueBwd {
    using TileShapeAcc = TileShapeAcc_;  // (kBlockM rows, kHeadDim, ·)
    using Element = Element_;
    using TiledMmaAcc = TiledMmaAcc_;
    static constexpr int kBlockM = get<0>(TileShapeAcc{});
    static constexpr int kHeadDim = get<1>(TileShapeAcc{});
    static constexpr bool kHasOut2 = kHasOut2_;  // dV next to dK; the dQ pass has acc1 only (acc2 is never live)

    using ShapeO = Shape<int32_t, int32_t, int32_t, int32_t>;  // (L, D, H, B)
    using StrideO = Stride<int64_t, _1, int64_t, int64_t>;     // row stride even (aligned pairs)

    struct Arguments {
        Element* ptr_out1;  // dK (dK/dV kernel) or dQ (dQ pass): scaled by softmax_scale
        Element* ptr_out2;  // dV, or nullptr (dQ pass: kHasOut2 = false)
        ShapeO shape;
        StrideO stride_out1, stride_out2;
        float scale1;  // softmax_scale
    };
    using Params = Arguments;
    static Params to_underlying_arguments(Arguments const& args) { return args; }

    template <class FrgAcc>
    CUTLASS_DEVICE static void store_one(Element* ptr, StrideO const& stride, ShapeO const& shape, FrgAcc const& acc,
                                         float scale, int thread_idx, int row_start, int row_end, int bidh,
                                         int bidb) {
        Tensor tc = TiledMmaAcc{}.get_thread_slice(thread_idx).partition_C(
            make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
        Element* base = ptr + int64_t(bidb) * get<3>(stride) + int64_t(bidh) * get<2>(stride);
        int64_t const row_stride = get<0>(stride);
        CUTLASS_PRAGMA_UNROLL
        for (int v = 0; v < size(acc); v += 2) {  // values v, v + 1: adjacent columns of one row
            int const row = row_start + get<0>(tc(v));
            if (row < row_end) {
                cutlass::Array<float, 2> pair;
                pair[0] = acc(v) * scale;
                pair[1] = acc(v + 1) * scale;
                *reinterpret_cast<cutlass::Array<Element, 2>*>(base + row * row_stride + get<1>(tc(v))) =
                    cutlass::NumericArrayConverter<Element, float, 2>{}(pair);
            }
        }
    }

    template <class FrgAcc>
    CUTLASS_DEVICE void store(Params const& params, FrgAcc const& acc1, FrgAcc const& acc2, int thread_idx,
                              int row_start, int row_end, int bidh, int bidb) {
        store_one(params.ptr_out1, params.stride_out1, params.shape, acc1, params.scale1, thread_idx, row_start,
                  row_end, bidh, bidb);
        if constexpr (kHasOut2) {
            store_one(params.ptr_out2, params.stride_out2, params.shape, acc2, 1.f, thread_idx, row_start, row_end,
                      bidh, bidb);
        }
    }
};

}  // namespace hmar
