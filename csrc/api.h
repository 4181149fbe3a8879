// The C++ API of the CUDA kernels: torch tensors in, FwdParams / BwdParams filled, the dispatchers called; the
// forward in api.cpp, the backward in api_bwd.cpp, each for the sm90a kernels (arch 90) and the sm80 ones (arch 80).
// Python reaches it through bindings.cpp; the C++ autograd path (native_attention.cpp) calls it directly.
// Only CPU-side torch headers (CI syntax-checks it against a CPU torch).
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace hmar {

// The tile tables of one launch, packed into one int32 buffer (hmar_kernels.tiles.LaunchTables): the offset of
// each table in elements, and the sizes the tables must agree with. Each table starts 16-byte aligned.
struct TileTables {
    at::Tensor buffer;  // (N,) int32, contiguous, on the device of q
    int64_t row_lo = 0, row_hi = 0;  // (L,) each
    int64_t row_start = 0, row_end = 0, col_num_full = 0;  // (T,) each
    int64_t col_offsets = 0;  // (T + 1,)
    int64_t col_start = 0, col_end = 0;  // (visits,) each
    int64_t programs = 0;  // (num_programs, 2)
    int64_t length = 0, row_tiles = 0, visits = 0, num_programs = 0;  // L, T, visits, program rows
};

// Everything a CUDA forward launch reads besides q, k, v, out and lse, fixed per (schedule, pattern, shape,
// options): built once per launch plan by hmar_kernels.backends.cuda.forward_setup.
struct CudaForward {
    TileTables tables;  // built with fwd_tile(D, config) (arch 90) or tile_shape_sm80(D)'s forward tile (arch 80)
    double softmax_scale = 0;
    int64_t config = 0;    // row of csrc/tile_size.h's fwd_tile_sm90 table (arch 90)
    int64_t num_ctas = 0;  // grid size; 0: one CTA per SM (arch 80: always one CTA per program)
    bool dynamic = true;   // dynamic scheduling (arch 90): CTAs claim programs through a counter that fwd keeps per
                           // (device, stream)
    int64_t arch = 90;     // 90: the sm90a kernels (Hopper only); 80: the sm80 kernels (sm80 and later)
};

// q, k, v, out: (B, H, L, D) bf16/fp16 on a GPU the arch runs on; lse: (B, H, L) fp32 contiguous. stream: the
// current cudaStream_t as an integer. Writes out and lse.
void fwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor& out, at::Tensor& lse,
         CudaForward const& args, int64_t stream);

// Everything a CUDA backward launch reads besides its tensors, fixed per (schedule, pattern, shape, options):
// built once per launch plan by hmar_kernels.backends.cuda.backward_setup.
struct CudaBackward {
    TileTables kv;  // the transposed pattern's tables (rows = keys) and program table, built with bwd_tile
    TileTables q;   // arch 90: the pattern's tables (rows = queries) and program table with the same tile
    TileTables pairs;  // arch 90, paired configs: a program table alone (programs, num_programs), both kinds
    double softmax_scale = 0;
    int64_t config = 0;  // arch 90: row of csrc/bwd_tile_size.h's bwd_tile_sm90 table
    int64_t arch = 90;   // as CudaForward::arch
};

// dout: (B, H, L, D) like q; out, lse: the forward's. dq, dk, dv: (B, H, L, D) like q, written. The fp32
// workspaces (delta, dq accumulator) are allocated here, on the current stream.
void bwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& out,
         at::Tensor const& dout, at::Tensor const& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
         CudaBackward const& args, int64_t stream);

// (block_m, block_n) of the forward tile (Python builds the TileMask with it).
std::tuple<int64_t, int64_t> fwd_tile(int64_t head_dim, int64_t config);

// (rows, cols, deterministic, paired) of an sm90 backward config: the TileMasks' tile shape (rows: the side a CTA
// owns), whether its gradients are bit-identical run to run (no atomics), whether it reads CudaBackward::pairs.
std::tuple<int64_t, int64_t, bool, bool> bwd_tile(int64_t head_dim, int64_t config);

// The sm80 tiles: (forward block_m, block_n, backward rows = keys, cols = queries).
std::tuple<int64_t, int64_t, int64_t, int64_t> sm80_tiles(int64_t head_dim);

int64_t sm_count(int64_t device);

}  // namespace hmar
