// Host-run checks of the register-layout assumptions of the sm80 kernels (no GPU needed):
//   1. acc_as_operand_a_sm80: the mma.sync accumulator of C = A·B, reinterpreted as the A operand of a following
//      GEMM with K = C's N, holds for every thread exactly the (row, k) coordinates that operand expects
//      (forward P·V, backward Pᵀ·dO and dSᵀ·Q);
//   2. acc_rowcol on the rank-2 accumulator: each view row is one matrix row, each view column one matrix column;
//   3. transposed(): the (cols, rows) view of a swizzled shared-memory tile addresses the same elements.
// Also prints the shared memory per CTA of each kernel. Exits non-zero on the first failure.
#include <cstdio>
#include <cstdlib>

#include <cute/tensor.hpp>

#include "../bwd_launch_sm80.h"
#include "../fwd_launch_sm80.h"

using namespace cute;
using namespace hmar;

static int failures = 0;

#define EXPECT(cond, ...)                        \
    do {                                         \
        if (!(cond)) {                           \
            std::printf("FAIL: " __VA_ARGS__);   \
            std::printf("\n");                   \
            ++failures;                          \
        }                                        \
    } while (0)

template <class TiledMma, int kRows, int kCols>
void check_acc_as_a(char const* what) {
    for (int t = 0; t < int(size(TiledMma{})); ++t) {
        auto thr = TiledMma{}.get_thread_slice(t);
        Tensor c = thr.partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{}));
        Tensor c_as_a = make_tensor(c.data(), acc_as_operand_a_sm80(c.layout()));
        Tensor a = thr.partition_A(make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{}));
        EXPECT(size(c_as_a) == size(a), "%s: sizes differ", what);
        for (int i = 0; i < int(size(a)); ++i) {
            EXPECT(c_as_a(i) == a(i), "%s: thread %d value %d: accumulator (%d, %d) vs operand (%d, %d)", what, t, i,
                   int(get<0>(c_as_a(i))), int(get<1>(c_as_a(i))), int(get<0>(a(i))), int(get<1>(a(i))));
        }
    }
    std::printf("acc_as_operand_a_sm80 %s: ok\n", what);
}

template <class TiledMma, int kRows, int kCols>
void check_rowcol(char const* what) {
    for (int t = 0; t < int(size(TiledMma{})); ++t) {
        Tensor c = TiledMma{}.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{}));
        Tensor rc = make_tensor(c.data(), acc_rowcol(c.layout()));
        for (int r = 0; r < int(size<0>(rc)); ++r) {
            for (int k = 0; k < int(size<1>(rc)); ++k) {
                EXPECT(get<0>(rc(r, k)) == get<0>(rc(r, 0)) && get<1>(rc(r, k)) == get<1>(rc(0, k)),
                       "%s: thread %d view (%d, %d) is not on row/column of its view row/column", what, t, r, k);
            }
        }
        // The 4 threads of a quad share rows (quad reductions in softmax.h).
        Tensor c0 = TiledMma{}.get_thread_slice(t & ~3).partition_C(
            make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{}));
        Tensor rc0 = make_tensor(c0.data(), acc_rowcol(c0.layout()));
        EXPECT(get<0>(rc(0, 0)) == get<0>(rc0(0, 0)), "%s: thread %d not on its quad's rows", what, t);
    }
    std::printf("acc_rowcol %s: ok\n", what);
}

template <class Layout>
void check_transposed(Layout const& layout, char const* what) {
    auto t = transposed(layout);
    for (int r = 0; r < int(size<0>(layout)); ++r) {
        for (int c = 0; c < int(size<1>(layout)); ++c) {
            EXPECT(t(c, r) == layout(r, c), "%s: (%d, %d)", what, r, c);
        }
    }
    std::printf("transposed %s: ok\n", what);
}

int main() {
    using T = cutlass::bfloat16_t;
    using Fwd64 = FwdKernelSm80<T, 64>::Mainloop;
    using Fwd128 = FwdKernelSm80<T, 128>::Mainloop;
    using Bwd64 = BwdKernelSm80<T, 64>::Mainloop;
    check_acc_as_a<typename Fwd64::TiledMma, Fwd64::kBlockM, Fwd64::kBlockN>("fwd D=64 P");
    check_acc_as_a<typename Fwd128::TiledMma, Fwd128::kBlockM, Fwd128::kBlockN>("fwd D=128 P");
    check_acc_as_a<typename Bwd64::TiledMmaSdp, Bwd64::kBlockN, Bwd64::kBlockM>("bwd P^T, dS^T");
    check_rowcol<typename Fwd64::TiledMma, Fwd64::kBlockM, Fwd64::kBlockN>("fwd S");
    check_rowcol<typename Bwd64::TiledMmaSdp, Bwd64::kBlockN, Bwd64::kBlockM>("bwd S^T");
    check_rowcol<typename Bwd64::TiledMmaDq, Bwd64::kBlockM, 64>("bwd dQ");
    check_transposed(typename Fwd64::SmemLayoutKV{}, "K/V 128x64");
    check_transposed(typename BwdKernelSm80<T, 128>::Mainloop::SmemLayoutQ{}, "Q 64x128");
    check_transposed(typename Bwd64::SmemLayoutDs{}, "dS 128x64");
    std::printf("smem per CTA: fwd D=64 %d B, D=128 %d B; bwd D=64 %d B, D=128 %d B\n",
                int(FwdKernelSm80<T, 64>::Kernel::SharedStorageSize),
                int(FwdKernelSm80<T, 128>::Kernel::SharedStorageSize),
                int(BwdKernelSm80<T, 64>::Kernel::SharedStorageSize),
                int(BwdKernelSm80<T, 128>::Kernel::SharedStorageSize));
    if (failures) {
        std::printf("layout_check_sm80: %d failures\n", failures);
        return 1;
    }
    std::printf("layout_check_sm80: all checks passed\n");
    return 0;
}
