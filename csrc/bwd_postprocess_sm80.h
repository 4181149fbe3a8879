// Backward postprocess (sm80 path; plain CUDA, any arch): dQ = softmax_scale · dq_accum, fp32 → the input dtype,
// written through dq's strides. Grid (ceil(L / 32), B·H), 256 threads: 8 threads per row, 16-byte stores.
#pragma once

#include <cstdint>

#include <cutlass/cutlass.h>
#include <cutlass/numeric_types.h>

#include "bwd_preprocess_sm80.h"
#include "flash_sm80.h"

namespace hmar {

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(256) bwd_postprocess_sm80(BwdParamsSm80 const p) {
    constexpr int kChunks = kHeadDim / 8 / 8;
    int const bh = blockIdx.y;
    int const bidb = bh / p.heads;
    int const bidh = bh % p.heads;
    int const row = blockIdx.x * kPrePostRowsPerBlock + threadIdx.x / 8;
    if (row >= p.seqlen) { return; }
    float const* acc = p.dq_accum + ((int64_t(bh) * p.seqlen + row) * kHeadDim);
    Element* dq = static_cast<Element*>(p.dq) + bidb * p.dq_batch_stride + bidh * p.dq_head_stride +
                  row * p.dq_row_stride;
    CUTLASS_PRAGMA_UNROLL
    for (int c = 0; c < kChunks; ++c) {
        int const col = (c * 8 + threadIdx.x % 8) * 8;
        float4 const a = reinterpret_cast<float4 const*>(acc + col)[0];
        float4 const b = reinterpret_cast<float4 const*>(acc + col)[1];
        float const x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        uint4 out;
        Element* oe = reinterpret_cast<Element*>(&out);
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < 8; ++j) { oe[j] = Element(x[j] * p.softmax_scale); }
        *reinterpret_cast<uint4*>(dq + col) = out;
    }
}

}  // namespace hmar
