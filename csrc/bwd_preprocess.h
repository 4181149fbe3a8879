// Backward preprocess: delta = rowsum(dO ∘ O) and lse_log2 = lse · log2(e) per (batch, head, row), fp32. Each
// row is read by a group of D / 8 (bf16/fp16) lanes with 16-byte loads, so a warp covers 32 / (D / 8) rows (4 at
// D = 64, 2 at D = 128) and every lane loads. lse = -inf (a row that sees no key) becomes +inf, so
// exp2(s − lse_log2) = 0 for every key of that row instead of NaN.
#pragma once

#include <cmath>

#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "flash_bwd.h"

namespace hmar {

template <class Element, int kHeadDim>
struct BwdPreprocessShape {
    static constexpr int kVec = 16 / int(sizeof(Element));  // elements per 16-byte load
    static_assert(kHeadDim % kVec == 0 && 32 % (kHeadDim / kVec) == 0);
    static constexpr int kLanesPerRow = kHeadDim / kVec;
    static constexpr int kRowsPerWarp = 32 / kLanesPerRow;
    static constexpr int kRowsPerBlock = 8 * kRowsPerWarp;  // 8 warps, 256 threads
};

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(256) bwd_preprocess_kernel(BwdParams const params) {
    using Shape = BwdPreprocessShape<Element, kHeadDim>;
    constexpr int kVec = Shape::kVec, kLanesPerRow = Shape::kLanesPerRow;
    int const lane_in_row = threadIdx.x % kLanesPerRow;
    int const row = blockIdx.x * Shape::kRowsPerBlock + threadIdx.x / kLanesPerRow;
    int const bh = blockIdx.y;
    int const b = bh / params.heads, h = bh % params.heads;
    bool const inside = row < params.seqlen;
    float sum = 0.f;
    if (inside) {
        auto const* o = static_cast<Element const*>(params.out) + b * params.o_batch_stride +
                        h * params.o_head_stride + row * params.o_row_stride + lane_in_row * kVec;
        auto const* d = static_cast<Element const*>(params.dout) + b * params.do_batch_stride +
                        h * params.do_head_stride + row * params.do_row_stride + lane_in_row * kVec;
        cutlass::Array<Element, kVec> ov = *reinterpret_cast<cutlass::Array<Element, kVec> const*>(o);
        cutlass::Array<Element, kVec> dv = *reinterpret_cast<cutlass::Array<Element, kVec> const*>(d);
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kVec; ++i) { sum += float(ov[i]) * float(dv[i]); }
    }
    // reduce within each row's lane group (aligned, so xor offsets below kLanesPerRow stay inside it); every lane
    // of the warp takes part, rows past the end add zeros
    CUTLASS_PRAGMA_UNROLL
    for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) { sum += __shfl_xor_sync(0xffffffff, sum, offset); }
    if (inside && lane_in_row == 0) {
        int64_t const i = int64_t(bh) * params.seqlen + row;
        params.delta[i] = sum;
        float const lse = params.lse[i];
        params.lse_log2[i] = lse == -INFINITY ? INFINITY : lse * float(M_LOG2E);
    }
}

template <class Element, int kHeadDim>
void run_bwd_preprocess(BwdParams const& params, cudaStream_t stream) {
    constexpr int kRows = BwdPreprocessShape<Element, kHeadDim>::kRowsPerBlock;
    dim3 const grid((params.seqlen + kRows - 1) / kRows, params.batch * params.heads);
    bwd_preprocess_kernel<Element, kHeadDim><<<grid, 256, 0, stream>>>(params);
}

}  // namespace hmar
