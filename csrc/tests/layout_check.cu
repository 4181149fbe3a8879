// Host-side checks of the register-layout assumptions of the sm90 forward (runs on a CPU: CuTe layouts are
// constexpr host/device code). Built and run by .ci/compile_cuda.sh:
//   nvcc -std=c++17 --expt-relaxed-constexpr -I<cutlass>/include csrc/tests/layout_check.cu -o layout_check
// 1. acc_rowcol: every value of a row of the view has the same query row; every column the same key.
// 2. acc_as_operand_a: value i of the S accumulator (QKᵀ partition) sits at the same (row, key) as value i of
//    the A operand of the PV wgmma, so P can be reused in place.
// 3. The rows of the S and O accumulators agree, so softmax row statistics apply to O rows.
// 4. The key offset of every column of the S view from the thread's first column is the same for all threads
//    (the mask compares against immediates).
// 5. The TMA coordinate tiles of the producer (tile_q, tile_k, tile_vt) start at any row / key: element (r, c) of
//    a tile is element (start + r, c) of the TMA coordinate tensor (descriptors built with a stub encoder).
// 6. The epilogue's shared → global copy: every (row, column) of a slab stored exactly once, each thread's chunk 8
//    consecutive columns of one row at 16 consecutive bytes of the swizzled slab, conflict-free per quarter warp.
#include <cstdio>
#include <set>
#include <utility>

// TMA descriptors are encoded on the host by cuTensorMapEncodeTiled (libcuda); this test only needs the
// coordinate tensors, so CUTLASS calls the stub below instead of looking the driver up.
#ifndef CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL
#define CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL 1
#endif
#include <cuda.h>

extern "C" CUresult CUDAAPI cuTensorMapEncodeTiled(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                                   cuuint64_t const*, cuuint64_t const*, cuuint32_t const*,
                                                   cuuint32_t const*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill) {
    return CUDA_SUCCESS;
}

#include "../fwd_launch.h"

using namespace cute;

static int failures = 0;

#define EXPECT(cond, ...)                   \
    do {                                    \
        if (!(cond)) {                      \
            if (failures++ < 10) {          \
                std::printf(__VA_ARGS__);   \
                std::printf("\n");          \
            }                               \
        }                                   \
    } while (0)

template <class Mainloop>
void check_tma_tiles(int head_dim, int config) {
    using Element = typename Mainloop::Element;
    int const L = 300, H = 3, B = 2, D = Mainloop::kHeadDim;
    auto const shape = make_shape(L, D, H, B);
    // Contiguous (B, H, L, D) q, k and v; a fake 1024-aligned address (nothing is dereferenced).
    auto const stride = make_stride(int64_t(D), _1{}, int64_t(L) * D, int64_t(H) * L * D);
    auto const* ptr = reinterpret_cast<Element const*>(uintptr_t(1) << 20);
    typename Mainloop::Arguments args{ptr, ptr, ptr, shape, stride, stride, stride, 1.f, hmar::TileMaskParams{}};
    typename Mainloop::Params params = Mainloop::to_underlying_arguments(args);
    Tensor mQ = params.tma_q.get_tma_tensor(params.shape);
    Tensor mK = params.tma_k.get_tma_tensor(params.shape);
    Tensor mVt = params.tma_v.get_tma_tensor(Mainloop::shape_vt(params.shape));
    EXPECT(!(mK(1, 0, 0, 0) == mK(0, 0, 0, 0)), "D=%d cfg=%d: K rows share a TMA coordinate", head_dim, config);
    int const bidh = 2, bidb = 1;
    for (int start : {0, 1, 37, 129, L - 5}) {  // L - 5: the tile reaches past L (TMA zero-fills)
        Tensor gQ = Mainloop::tile_q(params, start, bidh, bidb);
        Tensor gK = Mainloop::tile_k(params, start, bidh, bidb);
        Tensor gVt = Mainloop::tile_vt(params, start, bidh, bidb);
        for (int r = 0; r < size<0>(gQ); ++r) {
            for (int c = 0; c < D; ++c) {
                EXPECT(gQ(r, c) == mQ(start + r, c, bidh, bidb), "D=%d cfg=%d: Q tile at row %d: (%d, %d) misplaced",
                       head_dim, config, start, r, c);
            }
        }
        for (int r = 0; r < size<0>(gK); ++r) {
            for (int c = 0; c < D; ++c) {
                EXPECT(gK(r, c) == mK(start + r, c, bidh, bidb), "D=%d cfg=%d: K tile at key %d: (%d, %d) misplaced",
                       head_dim, config, start, r, c);
                EXPECT(gVt(c, r) == mVt(c, start + r, bidh, bidb),
                       "D=%d cfg=%d: Vt tile at key %d: (%d, %d) misplaced", head_dim, config, start, c, r);
            }
        }
    }
}

template <class Epilogue>
void check_epilogue_copy(int head_dim, int config) {
    using Element = typename Epilogue::Element;
    constexpr int kRows = Epilogue::kStoreRows, kCols = Epilogue::kHeadDim, kVec = Epilogue::kVecElems;
    typename Epilogue::GmemTiledCopyO copy_o;
    auto const slab = typename Epilogue::SmemLayoutO{};
    std::set<std::pair<int, int>> stored;
    int copies = 0;
    for (int t = 0; t < Epilogue::kStoreThreads; ++t) {
        auto thr = copy_o.get_thread_slice(t);
        Tensor c = thr.partition_D(make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{}));  // (CPY, M, K)
        EXPECT(size<0>(c) == kVec && size<2>(c) == 1, "D=%d cfg=%d: thread %d: not one %d-element chunk per row",
               head_dim, config, t, kVec);
        for (int m = 0; m < size<1>(c); ++m) {
            int const row = get<0>(c(0, m, 0)), col = get<1>(c(0, m, 0));
            int const offset = slab(row, col, 0);
            EXPECT(col % kVec == 0 && offset % kVec == 0, "D=%d cfg=%d: thread %d chunk %d unaligned", head_dim,
                   config, t, m);
            for (int v = 0; v < kVec; ++v) {
                EXPECT(get<0>(c(v, m, 0)) == row && get<1>(c(v, m, 0)) == col + v,
                       "D=%d cfg=%d: thread %d chunk %d value %d is not (row, col + v)", head_dim, config, t, m, v);
                EXPECT(slab(row, col + v, 0) == offset + v, "D=%d cfg=%d: thread %d chunk %d not contiguous in smem",
                       head_dim, config, t, m);
                stored.insert({get<0>(c(v, m, 0)), get<1>(c(v, m, 0))});
                ++copies;
            }
            // The threads of a quarter warp read one 16-byte chunk each per LDS.128: distinct 16-byte bank groups.
            if (t % 8 == 0) {
                unsigned groups = 0;
                for (int u = t; u < t + 8; ++u) {
                    Tensor cu = copy_o.get_thread_slice(u).partition_D(
                        make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{}));
                    int const offset_u = slab(get<0>(cu(0, m, 0)), get<1>(cu(0, m, 0)), 0);
                    int const group = (offset_u * int(sizeof(Element)) / 16) % 8;
                    groups |= 1u << group;
                }
                EXPECT(groups == 0xffu, "D=%d cfg=%d: threads %d..%d chunk %d: shared-memory bank conflict", head_dim,
                       config, t, t + 7, m);
            }
        }
    }
    EXPECT(int(stored.size()) == kRows * kCols && copies == kRows * kCols,
           "D=%d cfg=%d: the O copy covers %d of %d slab elements with %d copies", head_dim, config,
           int(stored.size()), kRows * kCols, copies);
}

template <class Element, int kHeadDim, int kConfig>
void check() {
    constexpr hmar::FwdTileSm90 tile = hmar::fwd_tile_sm90(kHeadDim, kConfig);
    using TileShape = Shape<Int<tile.block_m>, Int<tile.block_n>, Int<kHeadDim>>;
    using Mainloop = hmar::CollectiveMainloopFwdSm90<tile.stages, TileShape, Element, tile.intra_wg_overlap,
                                                     tile.wg_pingpong>;
    constexpr int BM = tile.block_m, BN = tile.block_n;
    typename Mainloop::TiledMmaQK mma_qk;
    typename Mainloop::TiledMmaPV mma_pv;
    for (int t = 0; t < Mainloop::NumMmaThreads; ++t) {
        Tensor cS = mma_qk.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));
        Tensor cP = mma_pv.get_thread_slice(t).partition_A(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));
        Tensor cO = mma_pv.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<BM>, Int<kHeadDim>>{}));
        auto a_layout = hmar::acc_as_operand_a(cS.layout());
        static_assert(decltype(size(a_layout))::value == decltype(size(cP))::value);
        EXPECT(shape(a_layout) == shape(cP.layout()), "D=%d cfg=%d: operand-A shape differs", kHeadDim, kConfig);
        for (int i = 0; i < size(cS); ++i) {
            auto a = cS(i);
            auto b = cP(i);  // cP's own shape is a_layout's shape: the same linear → coordinate map
            EXPECT(get<0>(a) == get<0>(b) && get<1>(a) == get<1>(b),
                   "D=%d cfg=%d thread %d value %d: S at (%d, %d) but P operand at (%d, %d)", kHeadDim, kConfig, t,
                   i, int(get<0>(a)), int(get<1>(a)), int(get<0>(b)), int(get<1>(b)));
        }
        Tensor sRC = make_tensor(cS.data(), hmar::acc_rowcol(cS.layout()));
        Tensor oRC = make_tensor(cO.data(), hmar::acc_rowcol(cO.layout()));
        EXPECT(size<0>(sRC) == size<0>(oRC), "row counts of S and O differ");
        for (int r = 0; r < size<0>(sRC); ++r) {
            for (int c = 0; c < size<1>(sRC); ++c) {
                EXPECT(get<0>(sRC(r, c)) == get<0>(sRC(r, 0)), "S row %d is not one query row", r);
                EXPECT(get<1>(sRC(r, c)) == get<1>(sRC(0, c)), "S column %d is not one key", c);
            }
            for (int c = 0; c < size<1>(oRC); ++c) {
                EXPECT(get<0>(oRC(r, c)) == get<0>(sRC(r, 0)), "O row %d != S row %d (thread %d)", r, r, t);
            }
        }
        // The mask's column offsets: the same for every thread (thread 0's are the reference).
        Tensor cS0 = mma_qk.get_thread_slice(0).partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));
        Tensor sRC0 = make_tensor(cS0.data(), hmar::acc_rowcol(cS0.layout()));
        for (int c = 0; c < size<1>(sRC); ++c) {
            EXPECT(get<1>(sRC(0, c)) - get<1>(sRC(0, 0)) == get<1>(sRC0(0, c)) - get<1>(sRC0(0, 0)),
                   "thread %d: S column %d has a thread-dependent key offset", t, c);
        }
        // The epilogue writes LSE from the thread holding column 0 of a row: exactly one per row.
        EXPECT((get<1>(oRC(0, 0)) == 0) == (t % 4 == 0), "thread %d: column-0 ownership unexpected", t);
    }
    check_tma_tiles<Mainloop>(kHeadDim, kConfig);
    check_epilogue_copy<typename hmar::FwdKernelSm90<Element, kHeadDim, kConfig>::Epilogue>(kHeadDim, kConfig);
    using Kernel = typename hmar::FwdKernelSm90<Element, kHeadDim, kConfig>::Kernel;
    std::printf("D=%d config %d (%dx%d, %d stages, %d consumer warpgroups, %d threads, %d bytes smem): %s\n",
                kHeadDim, kConfig, BM, BN, tile.stages, Mainloop::NumMmaWarpGroups, Kernel::NumThreads,
                Kernel::SharedStorageSize, failures ? "FAILED" : "ok");
}

int main() {
    check<cutlass::bfloat16_t, 64, 0>();
    check<cutlass::bfloat16_t, 64, 1>();
    check<cutlass::bfloat16_t, 64, 2>();
    check<cutlass::half_t, 128, 0>();
    check<cutlass::half_t, 128, 1>();
    check<cutlass::half_t, 128, 2>();
    if (failures) { std::printf("%d layout check(s) failed\n", failures); }
    return failures ? 1 : 0;
}
