// Online softmax in registers, base 2.
//
// Units: row_max is kept in raw score units (q·k); p = exp2(s·scale_log2 − row_max·scale_log2), one FFMA and
// one MUFU.EX2 per score. row_sum is this thread's partial sum over its columns; the 4 threads of a quad are
// summed once, in finalize. The LSE written for the backward is natural-log: row_max·softmax_scale + ln(row_sum).
// A row that has seen no visible key keeps row_max = -inf and row_sum = 0: it gets O = 0 and LSE = -inf.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "utils.h"

namespace hmar {

template <int kNRows>
struct OnlineSoftmax {
    float row_max[kNRows];
    float row_sum[kNRows];
    float const scale_log2;

    CUTLASS_DEVICE explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kNRows; ++r) {
            row_max[r] = -INFINITY;
            row_sum[r] = 0.f;
        }
    }

    // Scores S (rows, cols view) → probabilities P in place. o_scale[r] receives the factor by which the output
    // accumulated so far must be multiplied. Check_inf: some rows of S may be entirely -inf (masked tiles).
    template <bool Check_inf, class TensorS>
    CUTLASS_DEVICE void step(TensorS& s, float (&o_scale)[kNRows]) {
        static_assert(decltype(size<0>(s))::value == kNRows);
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kNRows; ++r) {
            float m = row_max[r];
            CUTLASS_PRAGMA_UNROLL
            for (int c = 0; c < size<1>(s); ++c) { m = fmaxf(m, s(r, c)); }
            m = quad_allreduce_max(m);
            // exp2(-inf - 0) = 0 keeps fully masked rows at P = 0 instead of NaN.
            float const m_scaled = (Check_inf && m == -INFINITY) ? 0.f : m * scale_log2;
            o_scale[r] = exp2f(row_max[r] * scale_log2 - m_scaled);
            row_max[r] = m;
            float sum = 0.f;
            CUTLASS_PRAGMA_UNROLL
            for (int c = 0; c < size<1>(s); ++c) {
                s(r, c) = exp2f(fmaf(s(r, c), scale_log2, -m_scaled));
                sum += s(r, c);
            }
            row_sum[r] = row_sum[r] * o_scale[r] + sum;
        }
    }

    // o_scale[r] = 1 / (sum of row r) (0 for an empty row); lse[r] natural-log LSE (-inf for an empty row).
    CUTLASS_DEVICE void finalize(float softmax_scale, float (&o_scale)[kNRows], float (&lse)[kNRows]) const {
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kNRows; ++r) {
            float const sum = quad_allreduce_sum(row_sum[r]);
            bool const empty = !(sum > 0.f);
            o_scale[r] = empty ? 0.f : 1.f / sum;
            lse[r] = empty ? -INFINITY : row_max[r] * softmax_scale + logf(sum);
        }
    }

    template <class TensorO>
    CUTLASS_DEVICE static void rescale(TensorO& o, float const (&o_scale)[kNRows]) {
        static_assert(decltype(size<0>(o))::value == kNRows);
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kNRows; ++r) {
            CUTLASS_PRAGMA_UNROLL
            for (int c = 0; c < size<1>(o); ++c) { o(r, c) *= o_scale[r]; }
        }
    }
};

}  // namespace hmar
