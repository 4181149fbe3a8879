// Forward epilogue collective: O (fp32 registers) → Element → shared memory (stmatrix) → global by TMA store;
// LSE straight from registers. TMA clips rows past L, so the last Q tile needs no predication.
//
// PerWarpgroup: each consumer warpgroup stores its own 64 rows (its own smem slab, named barrier and TMA store),
// so a warpgroup that finishes its mainloop first does not wait for the others; otherwise the whole CTA
// synchronises around one kBlockM-row store.
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
    static constexpr int NumMmaWarpGroups = NumMmaThreads / cutlass::NumThreadsPerWarpGroup;
    // Rows one TMA store writes, and the MMA whose C layout the stmatrix copy follows: one warpgroup's, or all.
    static constexpr int kStoreRows = PerWarpgroup ? 64 : kBlockM;
    using TiledMmaStore = std::conditional_t<
        PerWarpgroup, decltype(make_tiled_mma(typename TiledMmaPV::Atom{}, Layout<Shape<_1, _1, _1>>{})),
        TiledMmaPV>;

    using SmemLayoutOStore = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                                    Shape<Int<kStoreRows>, Int<kHeadDim>>{}));
    // (rows, D, stores): one slab per TMA store.
    using SmemLayoutO = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                               Shape<Int<kStoreRows>, Int<kHeadDim>, Int<kBlockM / kStoreRows>>{}));
    using SmemCopyAtomO = Copy_Atom<SM90_U32x4_STSM_N, Element>;
    using ShapeO = Shape<int32_t, int32_t, int32_t, int32_t>;  // (L, D, H, B)
    using StrideO = Stride<int64_t, _1, int64_t, int64_t>;
    using TMA_O = decltype(make_tma_copy(
        SM90_TMA_STORE{}, make_tensor(make_gmem_ptr(static_cast<Element*>(nullptr)), ShapeO{}, StrideO{}),
        SmemLayoutOStore{}, Shape<Int<kStoreRows>, Int<kHeadDim>>{}, _1{}));

    struct TensorStorage {
        cute::array_aligned<Element, cute::cosize_v<SmemLayoutO>, 1024> smem_o;
    };

    struct Arguments {
        Element* ptr_o;
        ShapeO shape;
        StrideO stride_o;
        float* ptr_lse;  // (B, H, L) contiguous
    };

    struct Params {
        ShapeO shape;
        TMA_O tma_o;
        float* ptr_lse;
    };

    static Params to_underlying_arguments(Arguments const& args) {
        Tensor mO = make_tensor(make_gmem_ptr(args.ptr_o), args.shape, args.stride_o);
        return {args.shape,
                make_tma_copy(SM90_TMA_STORE{}, mO, SmemLayoutOStore{}, Shape<Int<kStoreRows>, Int<kHeadDim>>{},
                              _1{}),
                args.ptr_lse};
    }

    CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const& params) {
        cute::prefetch_tma_descriptor(params.tma_o.get_tma_descriptor());
    }

    // tOrO: this thread's normalised fp32 O; lse: natural-log LSE of this thread's rows.
    template <class FrgO, int kRows>
    CUTLASS_DEVICE void store(Params const& params, FrgO const& tOrO, float const (&lse)[kRows],
                              TensorStorage& storage, int thread_idx, int m_block, int bidh, int bidb) {
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
                int const row = m_block * kBlockM + get<0>(tOcO_rc(r, 0));
                if (row < seqlen) { lse_row[row] = lse[r]; }
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
        int const slab_threads = PerWarpgroup ? cutlass::NumThreadsPerWarpGroup : NumMmaThreads;
        uint32_t const barrier = PerWarpgroup ? uint32_t(FwdNamedBarriers::EpilogueWG1) + slab
                                              : uint32_t(FwdNamedBarriers::EpilogueO);

        // The previous tile's TMA store must have finished reading the slab before anyone overwrites it.
        if (slab_thread == 0) { tma_store_wait<0>(); }
        cutlass::arch::NamedBarrier::sync(slab_threads, barrier);

        Tensor sO = make_tensor(make_smem_ptr(storage.smem_o.data()), SmemLayoutO{})(_, _, slab);  // (rows, D)
        auto smem_tiled_copy_O = make_tiled_copy_C(SmemCopyAtomO{}, TiledMmaStore{});
        auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(slab_thread);
        copy(smem_tiled_copy_O, smem_thr_copy_O.retile_S(tOrO_out), smem_thr_copy_O.partition_D(sO));
        // stmatrix writes through the generic proxy; the TMA store reads through the async proxy.
        cutlass::arch::fence_view_async_shared();
        cutlass::arch::NamedBarrier::sync(slab_threads, barrier);

        if (slab_thread == 0) {
            constexpr int kSlabs = kBlockM / kStoreRows;
            Tensor mO = params.tma_o.get_tma_tensor(params.shape)(_, _, bidh, bidb);  // (L, D)
            Tensor gO = local_tile(mO, Shape<Int<kStoreRows>, Int<kHeadDim>>{},
                                   make_coord(m_block * kSlabs + slab, _0{}));  // (rows, D)
            auto [tOgO, tOsO] = tma_partition(params.tma_o, group_modes<0, 2>(sO), group_modes<0, 2>(gO));
            copy(params.tma_o, tOsO, tOgO);
            tma_store_arrive();
        }
    }

    // Before the CTA exits, its last TMA store must have read shared memory.
    CUTLASS_DEVICE void store_tail(int thread_idx) {
        int const slab_thread = PerWarpgroup ? thread_idx % cutlass::NumThreadsPerWarpGroup : thread_idx;
        if (slab_thread == 0) { tma_store_wait<0>(); }
    }
};

}  // namespace hmar
