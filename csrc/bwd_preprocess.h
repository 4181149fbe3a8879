// Backward preprocess: delta = rowsum(dO ∘ O) and lse_log2 = lse · log2(e) per (batch, head, row), fp32. One warp
// per row, 16-byte loads. lse = -inf (a row that sees no key) becomes +inf, so exp2(s − lse_log2) = 0 for every
// key of that row instead of NaN.
#pragma once

#include <cmath>

#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "flash_bwd.h"

namespace hmar {

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(256) bwd_preprocess_kernel(BwdParams const params) {
    constexpr int kVec = 16 / int(sizeof(Element));  // elements per 16-byte load
    static_assert(kHeadDim % kVec == 0 && kHeadDim / kVec <= 32);
    constexpr int kLanes = kHeadDim / kVec;  // lanes that load one row
    int const lane = threadIdx.x % 32;
    int const row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int const bh = blockIdx.y;
    if (row >= params.seqlen) { return; }
    int const b = bh / params.heads, h = bh % params.heads;
    float sum = 0.f;
    if (lane < kLanes) {
        auto const* o = static_cast<Element const*>(params.out) + b * params.o_batch_stride +
                        h * params.o_head_stride + row * params.o_row_stride + lane * kVec;
        auto const* d = static_cast<Element const*>(params.dout) + b * params.do_batch_stride +
                        h * params.do_head_stride + row * params.do_row_stride + lane * kVec;
        cutlass::Array<Element, kVec> ov = *reinterpret_cast<cutlass::Array<Element, kVec> const*>(o);
        cutlass::Array<Element, kVec> dv = *reinterpret_cast<cutlass::Array<Element, kVec> const*>(d);
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kVec; ++i) { sum += float(ov[i]) * float(dv[i]); }
    }
    CUTLASS_PRAGMA_UNROLL
    for (int offset = 16; offset > 0; offset /= 2) { sum += __shfl_xor_sync(0xffffffff, sum, offset); }
    if (lane == 0) {
        int64_t const i = int64_t(bh) * params.seqlen + row;
        params.delta[i] = sum;
        float const lse = params.lse[i];
        params.lse_log2[i] = lse == -INFINITY ? INFINITY : lse * float(M_LOG2E);
    }
}

template <class Element, int kHeadDim>
void run_bwd_preprocess(BwdParams const& params, cudaStream_t stream) {
    constexpr int kRowsPerBlock = 8;  // one warp each
    dim3 const grid((params.seqlen + kRowsPerBlock - 1) / kRowsPerBlock, params.batch * params.heads);
    bwd_preprocess_kernel<Element, kHeadDim><<<grid, kRowsPerBlock * 32, 0, stream>>>(params);
}

}  // namespace hmar
