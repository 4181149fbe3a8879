// Host-side checks of the register-layout assumptions of the sm90 forward (runs on a CPU: CuTe layouts are
// constexpr host/device code). Built and run by .ci/compile_cuda.sh:
//   nvcc -std=c++17 --expt-relaxed-constexpr -I<cutlass>/include csrc/tests/layout_check.cu -o layout_check
// 1. acc_rowcol: every value of a row of the view has the same query row; every column the same key.
// 2. acc_as_operand_a: value i of the S accumulator (QKᵀ partition) sits at the same (row, key) as value i of
//    the A operand of the PV wgmma, so P can be reused in place.
// 3. The rows of the S and O accumulators agree, so softmax row statistics apply to O rows.
// 4. Adjacent columns of the S view are adjacent keys, starting even (the mask's paired level loads).
#include <cstdio>

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
        // The mask loads the levels of two adjacent keys at once: columns 2j, 2j + 1 of the view are keys k, k + 1
        // with k even.
        for (int c = 0; c + 1 < size<1>(sRC); c += 2) {
            EXPECT(get<1>(sRC(0, c)) % 2 == 0 && get<1>(sRC(0, c + 1)) == get<1>(sRC(0, c)) + 1,
                   "thread %d: S columns %d, %d are not an aligned key pair", t, c, c + 1);
        }
        // The epilogue writes LSE from the thread holding column 0 of a row: exactly one per row.
        EXPECT((get<1>(oRC(0, 0)) == 0) == (t % 4 == 0), "thread %d: column-0 ownership unexpected", t);
    }
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
