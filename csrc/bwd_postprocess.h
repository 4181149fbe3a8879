// Backward postprocess of the atomic dQ path: dq = softmax_scale · dq_accum, converted to the input dtype and
// written with the output's strides. dq_accum is (B, H, L, D) fp32 contiguous; each thread converts 4 values.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "flash_bwd.h"

namespace hmar {

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(256) bwd_postprocess_kernel(BwdParams const params) {
    constexpr int kVec = 4;
    static_assert(kHeadDim % kVec == 0);
    int64_t const i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;  // element of dq_accum
    int64_t const total = int64_t(params.batch) * params.heads * params.seqlen * kHeadDim;
    if (i >= total) { return; }
    int const d = int(i % kHeadDim);
    int64_t const row_bh = i / kHeadDim;
    int const row = int(row_bh % params.seqlen);
    int const bh = int(row_bh / params.seqlen);
    int const b = bh / params.heads, h = bh % params.heads;
    float4 const acc = *reinterpret_cast<float4 const*>(params.dq_accum + i);
    cutlass::Array<float, kVec> scaled;
    scaled[0] = acc.x * params.softmax_scale;
    scaled[1] = acc.y * params.softmax_scale;
    scaled[2] = acc.z * params.softmax_scale;
    scaled[3] = acc.w * params.softmax_scale;
    auto* dq = static_cast<Element*>(params.dq) + b * params.dq_batch_stride + h * params.dq_head_stride +
               row * params.dq_row_stride + d;
    *reinterpret_cast<cutlass::Array<Element, kVec>*>(dq) =
        cutlass::NumericArrayConverter<Element, float, kVec>{}(scaled);
}

template <class Element, int kHeadDim>
void run_bwd_postprocess(BwdParams const& params, cudaStream_t stream) {
    int64_t const total = int64_t(params.batch) * params.heads * params.seqlen * kHeadDim / 4;
    int const threads = 256;
    int64_t const blocks = (total + threads - 1) / threads;
    if (blocks > 0) { bwd_postprocess_kernel<Element, kHeadDim><<<unsigned(blocks), threads, 0, stream>>>(params); }
}

}  // namespace hmar
