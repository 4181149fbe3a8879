// Small device helpers shared by the collectives: named-barrier ids, the wgmma issue helper, register-fragment
// views of the wgmma accumulator, quad reductions.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

namespace hmar {

using namespace cute;

// User named barriers (CUTLASS adds its reserved count to these ids; 8 are left).
enum class FwdNamedBarriers : uint32_t {
    EpilogueO = 0,        // consumer threads around the shared-memory O tile
    WarpSchedulerWG1 = 1,  // WG1..WG3: the ping-pong turn of each consumer warpgroup
    WarpSchedulerWG2 = 2,
    WarpSchedulerWG3 = 3,
    WorkReady = 4,         // producer warp → consumers: the next program is in shared memory
    EpilogueWG1 = 5,       // EpilogueWG1..3: one consumer warpgroup around its own O slab (per-warpgroup stores)
    EpilogueWG2 = 6,
    EpilogueWG3 = 7,
};

// One warpgroup-wide wgmma batch: C (+)= A·B over all k-blocks, committed as one group.
// zero_init: the first k-block overwrites C. wg_wait >= 0 waits until at most that many groups are in flight.
template <bool zero_init, int wg_wait, class TiledMma, class TensorA, class TensorB, class TensorC>
CUTLASS_DEVICE void gemm(TiledMma& tiled_mma, TensorA const& tCrA, TensorB const& tCrB, TensorC& tCrC) {
    // A from shared memory is a tensor of wgmma descriptors; from registers, of values (then fence it too).
    constexpr bool a_in_registers =
        !cute::is_same_v<cute::remove_cvref_t<typename TensorA::iterator>, GMMA::DescriptorIterator>;
    if constexpr (a_in_registers) { warpgroup_fence_operand(const_cast<TensorA&>(tCrA)); }
    warpgroup_fence_operand(tCrC);
    warpgroup_arrive();
    if constexpr (zero_init) { tiled_mma.accumulate_ = GMMA::ScaleOut::Zero; }
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) {
        cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
    if constexpr (wg_wait >= 0) { warpgroup_wait<wg_wait>(); }
    warpgroup_fence_operand(tCrC);
    if constexpr (a_in_registers) { warpgroup_fence_operand(const_cast<TensorA&>(tCrA)); }
}

// The fp32 wgmma accumulator of one thread is ((2, 2, N/8), MMA_M, MMA_N): value v0 steps one column, v1 eight
// rows, v2 eight columns. Viewed as (rows, cols) = ((2, MMA_M), (2, N/8, MMA_N)) for row-wise softmax.
// The sm80 mma.sync accumulator is ((2, 2), MMA_M, MMA_N) (v0 one column, v1 eight rows; MMA_N steps eight
// columns): viewed as ((2, MMA_M), (2, MMA_N)).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_rowcol(Layout const& acc) {
    static_assert(decltype(rank(acc))::value == 3);
    static_assert(decltype(rank<0>(acc))::value == 3 || decltype(rank<0>(acc))::value == 2);
    auto v = get<0>(acc);
    if constexpr (decltype(rank<0>(acc))::value == 3) {
        return make_layout(make_layout(get<1>(v), get<1>(acc)), make_layout(get<0>(v), get<2>(v), get<2>(acc)));
    } else {
        return make_layout(make_layout(get<1>(v), get<1>(acc)), make_layout(get<0>(v), get<2>(acc)));
    }
}

// The same registers as the A operand of a register-sourced wgmma with K = N: ((2, 2, 2), MMA_M, N/16). Values
// (v0, v1, v2') of k-block j are accumulator values (v0, v1, 2j + v2'), which is the accumulator's own linear
// order (csrc/tests/layout_check.cu verifies this against CuTe's partitions).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_as_operand_a(Layout const& acc) {
    static_assert(decltype(rank<0>(acc))::value == 3);
    // One wgmma atom per warpgroup in M and N (AtomLayout (warpgroups, 1, 1)), so the orders coincide.
    static_assert(decltype(size<1>(acc))::value == 1 && decltype(size<2>(acc))::value == 1);
    constexpr int kNBlocks = decltype(size<0, 2>(acc))::value / 2;  // N / 16
    return make_layout(make_shape(make_shape(_2{}, _2{}, _2{}), size<1>(acc), Int<kNBlocks>{}));
}

// Max / sum over the 4 threads of a quad, which together hold one accumulator row.
CUTLASS_DEVICE float quad_allreduce_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
    return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
}

CUTLASS_DEVICE float quad_allreduce_sum(float x) {
    x += __shfl_xor_sync(0xffffffff, x, 2);
    return x + __shfl_xor_sync(0xffffffff, x, 1);
}

}  // namespace hmar
