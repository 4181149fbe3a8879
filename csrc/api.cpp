// The C++ forward API (api.h): checks the tensors (messages name them), fills the plain FwdParams and calls the
// dispatcher (fwd_dispatch.cpp). bindings.cpp exposes it to Python (hmar_kernels/backends/cuda.py); the C++ autograd
// path (native_attention.cpp) calls it directly.
//
// Only CPU-side torch headers are used (no c10/cuda): the caller passes its current CUDA stream as an integer,
// so this file also compiles against a CPU build of torch (CI).
#include "api.h"

#include <cuda_runtime_api.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "flash.h"
#include "tile_size.h"

namespace hmar {
namespace {

void check_cuda(cudaError_t status, char const* what) {
    TORCH_CHECK(status == cudaSuccess, "hmar_kernels CUDA forward: ", what, ": ", cudaGetErrorString(status));
}

// TMA reads q, k, v through tensor maps and the epilogue writes out in 16-byte vectors: 16-byte aligned base, unit
// stride on D and every other stride a multiple of 16 bytes (dims of size 1 get a placeholder stride: no index
// ever steps along them).
int64_t tma_stride(at::Tensor const& t, int dim) { return t.size(dim) == 1 ? 8 : t.stride(dim); }

void check_qkv(at::Tensor const& t, char const* name, at::Tensor const& q) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.dim() == 4, name, " must have shape (B, H, L, D), got ", t.sizes());
    TORCH_CHECK(t.sizes() == q.sizes(), name, " has shape ", t.sizes(), " but q has ", q.sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " has dtype ", t.scalar_type(), " but q has ",
                q.scalar_type());
    TORCH_CHECK(t.device() == q.device(), name, " is on ", t.device(), " but q is on ", q.device());
    TORCH_CHECK(t.stride(3) == 1, name, " must have unit stride on D (last dim), got strides ", t.strides());
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned for TMA");
    for (int d = 0; d < 3; ++d) {
        TORCH_CHECK(tma_stride(t, d) % 8 == 0, name, " strides must be multiples of 8 elements (16 bytes) for TMA,"
                    " got ", t.strides(), "; pass a contiguous tensor");
    }
}

// The packed tables: an int32 buffer on q's device, every table inside it. Returns a pointer to each.
struct TablePointers {
    int const *row_lo, *row_hi, *row_start, *row_end, *col_offsets, *col_num_full, *col_start, *col_end, *programs;
};

TablePointers check_tables(TileTables const& t, at::Tensor const& q) {
    at::Tensor const& b = t.buffer;
    TORCH_CHECK_VALUE(b.defined() && b.device() == q.device() && b.scalar_type() == at::kInt && b.is_contiguous()
                          && b.dim() == 1,
                      "tables.buffer must be a contiguous 1-d int32 tensor on ", q.device(), " (TileMask metadata)");
    int64_t const L = q.size(2);
    TORCH_CHECK_VALUE(t.length == L, "the tables were built for L = ", t.length, " but q has L = ", L);
    int const* base = b.data_ptr<int>();
    auto table = [&](int64_t offset, int64_t count, char const* name) {
        TORCH_CHECK_VALUE(offset >= 0 && count >= 0 && offset + count <= b.numel(), "tables.", name, " (offset ",
                          offset, ", ", count, " entries) lies outside the buffer of ", b.numel());
        return base + offset;
    };
    int64_t const T = t.row_tiles;
    return {table(t.row_lo, L, "row_lo"), table(t.row_hi, L, "row_hi"), table(t.row_start, T, "row_start"),
            table(t.row_end, T, "row_end"), table(t.col_offsets, T + 1, "col_offsets"),
            table(t.col_num_full, T, "col_num_full"), table(t.col_start, t.visits, "col_start"),
            table(t.col_end, t.visits, "col_end"), table(t.programs, 2 * t.num_programs, "programs")};
}

struct DeviceInfo {
    int major, minor, sm_count;
};

DeviceInfo device_info(int device) {
    static std::vector<DeviceInfo> cache;
    if (device >= int(cache.size())) { cache.resize(device + 1, DeviceInfo{-1, -1, 0}); }
    if (cache[device].major < 0) {
        cudaDeviceProp prop;
        check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        cache[device] = {prop.major, prop.minor, prop.multiProcessorCount};
    }
    return cache[device];
}

// Sets the current device for the scope (the launch goes to q's device) and restores it.
struct DeviceScope {
    int previous = -1;
    explicit DeviceScope(int device) {
        check_cuda(cudaGetDevice(&previous), "cudaGetDevice");
        if (previous != device) { check_cuda(cudaSetDevice(device), "cudaSetDevice"); }
    }
    ~DeviceScope() {
        int current = -1;
        if (cudaGetDevice(&current) == cudaSuccess && current != previous) { cudaSetDevice(previous); }
    }
};

}  // namespace

void fwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor& out, at::Tensor& lse,
         CudaForward const& args, std::optional<at::Tensor> const& counter, int64_t stream) {
    TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor, got device ", q.device());
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                "q must be bf16 or fp16 for the CUDA kernels, got ", q.scalar_type());
    check_qkv(q, "q", q);
    check_qkv(k, "k", q);
    check_qkv(v, "v", q);
    check_qkv(out, "out", q);
    int64_t const B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    TORCH_CHECK(lse.device() == q.device() && lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                    lse.dim() == 3 && lse.size(0) == B && lse.size(1) == H && lse.size(2) == L,
                "lse must be a contiguous fp32 (B, H, L) = (", B, ", ", H, ", ", L, ") tensor on ", q.device(),
                ", got ", lse.scalar_type(), " ", lse.sizes());
    TablePointers const tables = check_tables(args.tables, q);
    if (counter) {
        TORCH_CHECK(counter->device() == q.device() && counter->scalar_type() == at::kInt &&
                        counter->is_contiguous() && counter->numel() >= 2,
                    "counter must be 2 contiguous int32 on ", q.device());
    }
    TORCH_CHECK(B * H < (int64_t(1) << 31) && L < (int64_t(1) << 31), "B·H and L must fit in int32");

    int const device = q.get_device();
    DeviceInfo const info = device_info(device);
    TORCH_CHECK(info.major == 9 && info.minor == 0, "the CUDA forward needs an sm90 (Hopper) GPU; device ", device,
                " is sm", info.major, info.minor);
    DeviceScope scope(device);

    FwdParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.out = out.data_ptr();
    p.q_batch_stride = tma_stride(q, 0), p.q_head_stride = tma_stride(q, 1), p.q_row_stride = tma_stride(q, 2);
    p.k_batch_stride = tma_stride(k, 0), p.k_head_stride = tma_stride(k, 1), p.k_row_stride = tma_stride(k, 2);
    p.v_batch_stride = tma_stride(v, 0), p.v_head_stride = tma_stride(v, 1), p.v_row_stride = tma_stride(v, 2);
    p.o_batch_stride = tma_stride(out, 0), p.o_head_stride = tma_stride(out, 1);
    p.o_row_stride = tma_stride(out, 2);
    p.lse = lse.data_ptr<float>();
    p.batch = int(B), p.heads = int(H), p.seqlen = int(L), p.head_dim = int(D);
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    p.softmax_scale = float(args.softmax_scale);
    p.softmax_scale_log2 = float(args.softmax_scale * 1.4426950408889634);
    p.row_lo = tables.row_lo;
    p.row_hi = tables.row_hi;
    p.row_start = tables.row_start;
    p.row_end = tables.row_end;
    p.col_offsets = tables.col_offsets;
    p.col_num_full = tables.col_num_full;
    p.col_start = tables.col_start;
    p.col_end = tables.col_end;
    p.programs = tables.programs;
    p.num_programs = int(args.tables.num_programs);
    p.num_ctas = int(args.num_ctas > 0 ? args.num_ctas : info.sm_count);
    p.scheduler_counter = counter ? counter->data_ptr<int>() : nullptr;
    p.config = int(args.config);
    try {
        run_fwd(p, reinterpret_cast<cudaStream_t>(stream));
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, "hmar_kernels CUDA forward: ", error.what());
    }
    check_cuda(cudaGetLastError(), "kernel launch");
}

std::tuple<int64_t, int64_t> fwd_tile(int64_t head_dim, int64_t config) {
    TORCH_CHECK_VALUE(config >= 0 && config < kNumFwdConfigsSm90, "config must be in [0, ", kNumFwdConfigsSm90,
                      "), got ", config);
    FwdTileSm90 const tile = fwd_tile_sm90(int(head_dim), int(config));
    return {tile.block_m, tile.block_n};
}

int64_t sm_count(int64_t device) { return device_info(int(device)).sm_count; }

}  // namespace hmar
