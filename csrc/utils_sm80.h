// Helpers of the sm80 collectives (mma.sync through CuTe): warp-level GEMMs fed by ldmatrix, the
// accumulator → A-operand register view, fp32 → 16-bit fragment conversion, and row-predicated cp.async tile
// loads; on the host, the shared-memory opt-in. Arch-neutral pieces (accumulator row/column view, quad
// reductions) live in utils.h.
#pragma once

#include <stdexcept>
#include <string>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "utils.h"

namespace hmar {

using namespace cute;

// mma.sync atom of a 16-bit element type, fp32 accumulation.
template <class Element>
using MmaAtomSm80 = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                       MMA_Atom<SM80_16x8x16_F32F16F16F32_TN>,
                                       MMA_Atom<SM80_16x8x16_F32BF16BF16F32_TN>>;

// A tiled MMA of kWarpsM × kWarpsN warps; each warp covers 16 rows and 16 columns per repeat, so that x4 ldmatrix
// loads fit the B operand (a 16×16 block per warp).
template <class Element, int kWarpsM, int kWarpsN>
using TiledMmaSm80 = decltype(make_tiled_mma(MmaAtomSm80<Element>{}, Layout<Shape<Int<kWarpsM>, Int<kWarpsN>, _1>>{},
                                             Tile<Int<16 * kWarpsM>, Int<16 * kWarpsN>, _16>{}));

// Shared-memory tile of (rows, cols) 16-bit elements, cols a multiple of 64: 128-byte rows, XOR-swizzled so that
// ldmatrix (either orientation) and 16-byte cp.async stores are free of bank conflicts.
template <class Element, int kRows, int kCols>
using SmemLayoutSm80 = decltype(tile_to_shape(
    composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}), Shape<Int<kRows>, Int<kCols>>{}));

// The same tile viewed transposed, (cols, rows): operands read with ldmatrix.trans.
template <class SmemLayout>
CUTE_HOST_DEVICE constexpr auto transposed(SmemLayout const& layout) {
    return composition(layout, make_layout(make_shape(size<1>(layout), size<0>(layout)), GenRowMajor{}));
}

// The mma.sync accumulator ((2, 2), MMA_M, MMA_N) of C = A·B reused as the A operand of a following GEMM whose
// K is this N: ((2, 2, 2), MMA_M, MMA_N / 2). A k-block of 16 holds accumulator column blocks 2j and 2j + 1
// (csrc/tests/layout_check_sm80.cu checks the coordinates).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_as_operand_a_sm80(Layout const& acc) {
    static_assert(decltype(rank<0>(acc))::value == 2);
    static_assert(decltype(size<2>(acc))::value % 2 == 0);
    auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // ((2, 2), MMA_M, (2, MMA_N / 2))
    return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

// fp32 fragment → a new fragment of To with the same layout.
template <class To, class Tensor>
CUTLASS_DEVICE auto convert_fragment(Tensor const& src) {
    constexpr int N = decltype(size(src))::value;
    auto dst = make_tensor<To>(src.layout());
    *reinterpret_cast<cutlass::Array<To, N>*>(raw_pointer_cast(dst.data())) =
        cutlass::NumericArrayConverter<To, float, N>{}(
            *reinterpret_cast<cutlass::Array<float, N> const*>(raw_pointer_cast(src.data())));
    return dst;
}

// acc += A·B with both operands in shared memory, read one k-block ahead of the mma (ldmatrix).
template <class TiledMma, class TensorC, class TensorA, class TensorB, class TensorSA, class TensorSB,
          class CopyA, class CopyB, class ThrCopyA, class ThrCopyB>
CUTLASS_DEVICE void gemm_ss(TiledMma& tiled_mma, TensorC& acc, TensorA& tCrA, TensorB& tCrB, TensorSA const& tCsA,
                            TensorSB const& tCsB, CopyA const& copy_a, CopyB const& copy_b,
                            ThrCopyA const& thr_copy_a, ThrCopyB const& thr_copy_b) {
    Tensor tCrA_view = thr_copy_a.retile_D(tCrA);
    Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
    copy(copy_a, tCsA(_, _, _0{}), tCrA_view(_, _, _0{}));
    copy(copy_b, tCsB(_, _, _0{}), tCrB_view(_, _, _0{}));
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) {
        if (k + 1 < size<2>(tCrA)) {
            copy(copy_a, tCsA(_, _, k + 1), tCrA_view(_, _, k + 1));
            copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
        }
        cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
    }
}

// acc += A·B with A in registers (e.g. P from a previous accumulator), B from shared memory.
template <class TiledMma, class TensorC, class TensorA, class TensorB, class TensorSB, class CopyB, class ThrCopyB>
CUTLASS_DEVICE void gemm_rs(TiledMma& tiled_mma, TensorC& acc, TensorA const& tCrA, TensorB& tCrB,
                            TensorSB const& tCsB, CopyB const& copy_b, ThrCopyB const& thr_copy_b) {
    Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
    copy(copy_b, tCsB(_, _, _0{}), tCrB_view(_, _, _0{}));
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) {
        if (k + 1 < size<2>(tCrA)) { copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1)); }
        cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
    }
}

// Global → shared copies of 16-byte chunks by cp.async (cache-global: K/V tiles are reread from L2 by other CTAs,
// not from L1); kThreads threads cover 8 chunks (64 elements) of kThreads / 8 rows per pass.
template <class Element, int kThreads>
using GmemTiledCopySm80 = decltype(make_tiled_copy(
    Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
    Layout<Shape<Int<kThreads / 8>, _8>, Stride<_8, _1>>{}, Layout<Shape<_1, _8>>{}));

// Issue the cp.async loads of a (kRows, D) tile whose first row is `row0` of a (rows, D) matrix with row stride
// `row_stride`; rows at or past `valid_rows` (counted from row0) are zero-filled instead (they lie past L or
// belong to no one; zeros keep 0·garbage out of the products).
template <int kRows, int kHeadDim, class GmemCopy, class Element, class TensorS>
CUTLASS_DEVICE void load_rows_async(GmemCopy const& gmem_copy, int thread_idx, Element const* base, int64_t row0,
                                    int64_t row_stride, int valid_rows, TensorS& sTile) {
    Tensor g = make_tensor(make_gmem_ptr(base + row0 * row_stride), Shape<Int<kRows>, Int<kHeadDim>>{},
                           make_stride(row_stride, _1{}));
    auto thr = gmem_copy.get_thread_slice(thread_idx);
    Tensor tg = thr.partition_S(g);
    Tensor ts = thr.partition_D(sTile);
    Tensor tc = thr.partition_S(make_identity_tensor(Shape<Int<kRows>, Int<kHeadDim>>{}));
    CUTLASS_PRAGMA_UNROLL
    for (int m = 0; m < size<1>(tg); ++m) {
        if (get<0>(tc(0, m, 0)) < valid_rows) {
            copy(gmem_copy, tg(_, m, _), ts(_, m, _));
        } else {
            clear(ts(_, m, _));
        }
    }
}

// Epilogue halves, split so that several tiles share one pair of barriers. Callers sync (cp.async drained and
// every thread done with the buffer) before the first and between the two.
// 1. A fp32 accumulator fragment of TiledMma over a (kRows, D) tile → 16-bit → shared memory (32-bit stores, two
//    adjacent columns each).
template <class Element, class TiledMma, class FrgAcc, class TensorS>
CUTLASS_DEVICE void fragment_to_smem(FrgAcc const& acc, TensorS& sTile, int thread_idx) {
    Tensor r = convert_fragment<Element>(acc);
    auto smem_copy = make_tiled_copy_C(Copy_Atom<UniversalCopy<uint32_t>, Element>{}, TiledMma{});
    auto thr = smem_copy.get_thread_slice(thread_idx);
    copy(smem_copy, thr.retile_S(r), thr.partition_D(sTile));
}

// 2. Shared (kRows, D) tile → global rows [0, rows_owned) of a matrix at `gmem` with row stride `row_stride`, in
//    16-byte chunks (8 threads per 64 columns); rows at or past rows_owned belong to another tile or lie past L.
template <int kRows, int kHeadDim, int kThreads, class Element, class TensorS>
CUTLASS_DEVICE void smem_to_gmem_rows(TensorS const& sTile, Element* gmem, int64_t row_stride, int rows_owned,
                                      int thread_idx) {
    using GmemCopy = decltype(make_tiled_copy(Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{},
                                              Layout<Shape<Int<kThreads / 8>, _8>, Stride<_8, _1>>{},
                                              Layout<Shape<_1, _8>>{}));
    Tensor g = make_tensor(make_gmem_ptr(gmem), Shape<Int<kRows>, Int<kHeadDim>>{}, make_stride(row_stride, _1{}));
    GmemCopy gmem_copy;
    auto thr = gmem_copy.get_thread_slice(thread_idx);
    Tensor ts = thr.partition_S(sTile);
    Tensor tg = thr.partition_D(g);
    Tensor tc = thr.partition_D(make_identity_tensor(Shape<Int<kRows>, Int<kHeadDim>>{}));
    CUTLASS_PRAGMA_UNROLL
    for (int m = 0; m < size<1>(ts); ++m) {
        if (get<0>(tc(0, m, 0)) < rows_owned) { copy(gmem_copy, ts(_, m, _), tg(_, m, _)); }
    }
}

// Host side: opt a kernel into `bytes` of dynamic shared memory. A GPU with less per block (sm86 and sm89 allow
// 99 KB: the D = 128 backward's 144 KB do not fit) gets a std::runtime_error naming the kernel, not a failed launch.
template <class Kernel>
void set_smem_sm80(Kernel kernel, int bytes, char const* what) {
    if (bytes <= 48 * 1024) { return; }
    cudaError_t const status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (status != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it so that later checks do not report it again
        throw std::runtime_error(std::string(what) + " needs " + std::to_string(bytes) +
                                 " bytes of shared memory per block, more than this GPU allows (" +
                                 cudaGetErrorString(status) + ")");
    }
}

}  // namespace hmar
