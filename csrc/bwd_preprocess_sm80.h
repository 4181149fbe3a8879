// Backward preprocess (sm80 path; plain CUDA, any arch): delta = rowsum(dO ∘ O) in fp32, and the fp32 dQ
// accumulator of the same rows zeroed for the main kernel's atomics. Grid (ceil(L / 32), B·H), 256 threads:
// 8 threads per row, 16-byte loads.
#pragma once

#include <cstdint>

#include <cutlass/cutlass.h>
#include <cutlass/numeric_types.h>

#include "flash_sm80.h"

namespace hmar {

constexpr int kPrePostRowsPerBlock = 32;  // rows of one (batch, head) per block of 256 threads

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(256) bwd_preprocess_sm80(BwdParamsSm80 const p) {
    constexpr int kChunks = kHeadDim / 8 / 8;  // 16-byte chunks per thread and row
    int const bh = blockIdx.y;
    int const bidb = bh / p.heads;
    int const bidh = bh % p.heads;
    int const row = blockIdx.x * kPrePostRowsPerBlock + threadIdx.x / 8;
    int const lane8 = threadIdx.x % 8;
    bool const inside = row < p.seqlen;
    float sum = 0.f;
    if (inside) {
        Element const* o = static_cast<Element const*>(p.out) + bidb * p.o_batch_stride +
                           bidh * p.o_head_stride + row * p.o_row_stride;
        Element const* d = static_cast<Element const*>(p.dout) + bidb * p.do_batch_stride +
                           bidh * p.do_head_stride + row * p.do_row_stride;
        float* acc = p.dq_accum + ((int64_t(bh) * p.seqlen + row) * kHeadDim);
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kChunks; ++c) {
            int const col = (c * 8 + lane8) * 8;
            uint4 const ov = *reinterpret_cast<uint4 const*>(o + col);
            uint4 const dv = *reinterpret_cast<uint4 const*>(d + col);
            Element const* oe = reinterpret_cast<Element const*>(&ov);
            Element const* de = reinterpret_cast<Element const*>(&dv);
            CUTLASS_PRAGMA_UNROLL
            for (int j = 0; j < 8; ++j) { sum += float(oe[j]) * float(de[j]); }
            reinterpret_cast<float4*>(acc + col)[0] = make_float4(0.f, 0.f, 0.f, 0.f);
            reinterpret_cast<float4*>(acc + col)[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    sum += __shfl_xor_sync(0xffffffff, sum, 4);
    sum += __shfl_xor_sync(0xffffffff, sum, 2);
    sum += __shfl_xor_sync(0xffffffff, sum, 1);
    if (inside && lane8 == 0) { p.delta[int64_t(bh) * p.seqlen + row] = sum; }
}

}  // namespace hmar
