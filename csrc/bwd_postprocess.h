// Backward postprocess of the atomic dQ configs: dq = softmax_scale · dq_accum, converted to the input dtype and
// written with the output's strides. dq_accum is (B, H, kSplits, L + kPadRows, D / kSplits) fp32 (the mainloop's
// layout: kSplits = 2 when each consumer warpgroup bulk-adds a contiguous half of the head dims); each thread
// converts 4 adjacent head dims of one row.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "flash_bwd.h"

namespace hmar {

template <class Element, int kHeadDim, int kSplits, int kPadRows>
__global__ void __launch_bounds__(256) bwd_postprocess_kernel(BwdParams const params) {
    constexpr int kVec = 4;
    constexpr int kDims = kHeadDim / kSplits;  // head dims per split
    static_assert(kDims % kVec == 0);
    int64_t const i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;  // element of dq, (B·H, L, D)
    int64_t const total = int64_t(params.batch) * params.heads * params.seqlen * kHeadDim;
    if (i >= total) { return; }
    int const d = int(i % kHeadDim);
    int64_t const row_bh = i / kHeadDim;
    int const row = int(row_bh % params.seqlen);
    int64_t const bh = row_bh / params.seqlen;
    int64_t const rows = params.seqlen + kPadRows;
    float4 const acc = *reinterpret_cast<float4 const*>(
        params.dq_accum + ((bh * kSplits + d / kDims) * rows + row) * kDims + d % kDims);
    cutlass::Array<float, kVec> scaled;
    scaled[0] = acc.x * params.softmax_scale;
    scaled[1] = acc.y * params.softmax_scale;
    scaled[2] = acc.z * params.softmax_scale;
    scaled[3] = acc.w * params.softmax_scale;
    int const b = int(bh / params.heads), h = int(bh % params.heads);
    auto* dq = static_cast<Element*>(params.dq) + b * params.dq_batch_stride + h * params.dq_head_stride +
               row * params.dq_row_stride + d;
    *reinterpret_cast<cutlass::Array<Element, kVec>*>(dq) =
        cutlass::NumericArrayConverter<Element, float, kVec>{}(scaled);
}

template <class Element, int kHeadDim, int kSplits, int kPadRows>
void run_bwd_postprocess(BwdParams const& params, cudaStream_t stream) {
    int64_t const total = int64_t(params.batch) * params.heads * params.seqlen * kHeadDim / 4;
    int const threads = 256;
    int64_t const blocks = (total + threads - 1) / threads;
    if (blocks > 0) {
        bwd_postprocess_kernel<Element, kHeadDim, kSplits, kPadRows><<<unsigned(blocks), threads, 0, stream>>>(params);
    }
}

}  // namespace hmar
