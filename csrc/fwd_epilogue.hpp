// Forward epilogue collective: O (fp32 registers) → Element → shared memory (stmatrix, 128-byte swizzled slab)
// → global memory by predicated 16-byte vector stores; LSE straight from registers. A row tile computes kBlockM
// rows from row_start but owns only [row_start, row_end) (the next tile may start inside it), so rows at or past
// row_end are never written: a TMA store cannot clip there, each thread stores its rows of the slab or skips them.
//
// PerWarpgroup: each consumer warpgroup stores its own 64 rows (its own smem slab and named barrier), so a
// warpgroup that finishes its mainloop first does not wait for the others; otherwise the whole CTA synchronises
// around one kBlockM-row slab.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "utils.h"

namespace hmar {

using namespace cute;

template <class TileShape_, class Element_, class TiledMmaPV_, bool PerWarpgroup_>
struct CollectiveEpilogueFwd {
    using TileShape = TileShape_;  // (kBlockM, kBlockN, kHeadDim)
    using Element = Element_;
    using TiledMmaPV = TiledMmaPV_;
    static constexpr bool PerWarpgroup = PerWarpgroup_;
    static constexpr int kBlockM = get<0>(TileShape{});
    static constexpr int kHeadDim = get<2>(TileShape{});
    static constexpr int NumMmaThreads = size(TiledMmaPV{});
    // Rows of one slab (one store), the threads that store it, and the MMA whose C layout the stmatrix copy
    // follows: one warpgroup's, or all.
    static constexpr int kStoreRows = PerWarpgroup ? 64 : kBlockM;
    static constexpr int kStoreThreads = PerWarpgroup ? cutlass::NumThreadsPerWarpGroup : NumMmaThreads;
    using TiledMmaStore = std::conditional_t<
        PerWarpgroup, decltype(make_tiled_mma(typename TiledMmaPV::Atom{}, Layout<Shape<_1, _1, _1>>{})),
        TiledMmaPV>;

    // (rows, D, slabs)
    using SmemLayoutO = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                               Shape<Int<kStoreRows>, Int<kHeadDim>, Int<kBlockM / kStoreRows>>{}));
    using SmemCopyAtomO = Copy_Atom<SM90_U32x4_STSM_N, Element>;

    // Slab → global: 16 bytes (8 elements) per thread and instruction, a row's 16-byte chunks on consecutive
    // threads (coalesced stores; the 128-byte swizzle keeps each chunk contiguous and a row's 8 chunks in distinct
    // bank groups, so the shared-memory reads are conflict-free). One pass covers kStoreThreads / kChunksPerRow rows.
    static constexpr int kVecElems = 16 / int(sizeof(Element));
    static constexpr int kChunksPerRow = kHeadDim / kVecElems;
    static_assert(kHeadDim % kVecElems == 0 && kStoreThreads % kChunksPerRow == 0);
    static constexpr int kRowsPerPass = kStoreThreads / kChunksPerRow;
    static_assert(kStoreRows % kRowsPerPass == 0);
    using GmemTiledCopyO = decltype(make_tiled_copy(
        Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{},
        Layout<Shape<Int<kRowsPerPass>, Int<kChunksPerRow>>, Stride<Int<kChunksPerRow>, _1>>{},
        Layout<Shape<_1, Int<kVecElems>>>{}));  // partitions only: copy_chunk below moves the bytes

    // One 16-byte chunk, shared → global. The swizzled slab's element addresses are generic pointers (CuTe applies
    // the swizzle to the address bits); ld.shared on the converted address avoids a generic load.
    CUTLASS_DEVICE static void copy_chunk(Element const* smem, Element* gmem) {
        uint32_t const addr = cute::cast_smem_ptr_to_uint(smem);
        uint4 v;
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "r"(addr));
        *reinterpret_cast<uint4*>(gmem) = v;
    }

    using ShapeO = Shape<int32_t, int32_t, int32_t, int32_t>;  // (L, D, H, B)
    using StrideO = Stride<int64_t, _1, int64_t, int64_t>;     // row stride a multiple of 8 elements (api.cpp)

    struct TensorStorage {
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutO>, 1024> smem_o;
    };

    struct Arguments {
        Element* ptr_o;  // 16-byte aligned
        ShapeO shape;
        StrideO stride_o;
        float* ptr_lse;  // (B, H, L) contiguous
    };

    using Params = Arguments;

    static Params to_underlying_arguments(Arguments const& args) { return args; }

    // tOrO: this thread's normalised fp32 O; lse: natural-log LSE of this thread's rows. The tile computed rows
    // [row_start, row_start + kBlockM) and writes [row_start, row_end).
    template <class FrgO, int kRows>
    CUTLASS_DEVICE void store(Params const& params, FrgO const& tOrO, float const (&lse)[kRows],
                              TensorStorage& storage, int thread_idx, int row_start, int row_end, int bidh,
                              int bidb) {
        int const seqlen = get<0>(params.shape);
        int const heads = get<2>(params.shape);

        // LSE first: it does not wait for the shared-memory tile. Each row is held by a quad; its first thread
        // (column 0) writes it.
        Tensor tOcO = TiledMmaPV{}.get_thread_slice(thread_idx).partition_C(
            make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
        Tensor tOcO_rc = make_tensor(tOcO.data(), acc_rowcol(tOcO.layout()));
        static_assert(decltype(size<0>(tOcO_rc))::value == kRows);
        if (get<1>(tOcO_rc(0, 0)) == 0) {
            float* lse_row = params.ptr_lse + (int64_t(bidb) * heads + bidh) * seqlen;
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
                int const row = row_start + get<0>(tOcO_rc(r, 0));
                if (row < row_end) { lse_row[row] = lse[r]; }
            }
        }

        constexpr int N = decltype(size(tOrO))::value;
        Tensor tOrO_out = make_tensor<Element>(tOrO.layout());
        *reinterpret_cast<cutlass::Array<Element, N>*>(raw_pointer_cast(tOrO_out.data())) =
            cutlass::NumericArrayConverter<Element, float, N>{}(
                *reinterpret_cast<cutlass::Array<float, N> const*>(raw_pointer_cast(tOrO.data())));

        // Who stores what: a warpgroup its 64 rows (slab = warpgroup), or the CTA all kBlockM rows (slab 0).
        int const slab = PerWarpgroup ? thread_idx / cutlass::NumThreadsPerWarpGroup : 0;
        int const slab_thread = PerWarpgroup ? thread_idx % cutlass::NumThreadsPerWarpGroup : thread_idx;
        uint32_t const barrier = PerWarpgroup ? uint32_t(FwdNamedBarriers::EpilogueWG1) + slab
                                              : uint32_t(FwdNamedBarriers::EpilogueO);

        // Every thread of the slab must have read the previous tile's rows out of it before anyone overwrites it.
        cutlass::arch::NamedBarrier::sync(kStoreThreads, barrier);

        Tensor sO = make_tensor(make_smem_ptr(storage.smem_o.data()), SmemLayoutO{})(_, _, slab);  // (rows, D)
        auto smem_tiled_copy_O = make_tiled_copy_C(SmemCopyAtomO{}, TiledMmaStore{});
        auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(slab_thread);
        copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(tOrO_out), smem_thr_copy_O.partition_D(sO));
        // stmatrix and the loads below both go through the generic proxy: the barrier orders them.
        cutlass::arch::NamedBarrier::sync(kStoreThreads, barrier);

        int const slab_row = row_start + slab * kStoreRows;
        Tensor mO = make_tensor(make_gmem_ptr(params.ptr_o), params.shape, params.stride_o)(_, _, bidh, bidb);
        Tensor gO = local_tile(domain_offset(make_coord(slab_row, _0{}), mO),
                               Shape<Int<kStoreRows>, Int<kHeadDim>>{}, make_coord(_0{}, _0{}));  // (rows, D)
        GmemTiledCopyO gmem_tiled_copy_O;
        auto gmem_thr_copy_O = gmem_tiled_copy_O.get_thread_slice(slab_thread);
        Tensor tOsO = gmem_thr_copy_O.partition_S(sO);  // (CPY, CPY_M, CPY_K)
        Tensor tOgO = gmem_thr_copy_O.partition_D(gO);
        Tensor tOcS = gmem_thr_copy_O.partition_D(make_identity_tensor(Shape<Int<kStoreRows>, Int<kHeadDim>>{}));
        static_assert(decltype(size<2>(tOsO))::value == 1, "one 16-byte chunk per thread and row");
        int const rows_owned = row_end - slab_row;  // rows at or past it belong to another tile, or lie past L
        CUTLASS_PRAGMA_UNROLL
        for (int m = 0; m < size<1>(tOsO); ++m) {
            if (get<0>(tOcS(0, m, 0)) < rows_owned) { copy_chunk(&tOsO(0, m, 0), &tOgO(0, m, 0)); }
        }
    }
};

}  // namespace hmar
