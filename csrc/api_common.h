// Checks and helpers shared by the C++ APIs of the forward (api.cpp) and the backward (api_bwd.cpp): tensor
// checks whose messages name the tensor, the packed tile tables, the device's properties. CPU-side torch headers.
#pragma once

#include <torch/extension.h>

#include <cuda_runtime_api.h>

#include <vector>

#include "api.h"
#include "tensor_rules.h"

namespace hmar::detail {

inline void check_cuda(cudaError_t status, char const* what) {
    TORCH_CHECK(status == cudaSuccess, "hmar_kernels CUDA kernels: ", what, ": ", cudaGetErrorString(status));
}

// The stride of dimension dim as the kernels read it (tensor_rules.h: size-1 dimensions get a placeholder).
inline int64_t tma_stride(at::Tensor const& t, int dim) {
    return kernel_stride(t.sizes().data(), t.strides().data(), int(t.dim()), dim);
}

// Whether TMA can read t in place (tensor_rules.h); the kernels' 16-byte cp.async loads need the same.
inline bool tma_readable(at::Tensor const& t) {
    return tma_readable_layout(t.sizes().data(), t.strides().data(), int(t.dim()), t.element_size(),
                               reinterpret_cast<uintptr_t>(t.data_ptr()));
}

inline void check_qkv(at::Tensor const& t, char const* name, at::Tensor const& q) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.dim() == 4, name, " must have shape (B, H, L, D), got ", t.sizes());
    TORCH_CHECK(t.sizes() == q.sizes(), name, " has shape ", t.sizes(), " but q has ", q.sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " has dtype ", t.scalar_type(), " but q has ",
                q.scalar_type());
    TORCH_CHECK(t.device() == q.device(), name, " is on ", t.device(), " but q is on ", q.device());
    TORCH_CHECK(tma_readable(t), name, " cannot be read by TMA (strides ", t.strides(), ", address % 16 = ",
                reinterpret_cast<uintptr_t>(t.data_ptr()) % 16, "): it needs unit stride on D, a 16-byte aligned "
                "address and strides of 16-byte multiples; pass a contiguous tensor");
}

// A contiguous fp32 (B, H, L) tensor on q's device (lse).
inline void check_rows(at::Tensor const& t, char const* name, at::Tensor const& q) {
    int64_t const B = q.size(0), H = q.size(1), L = q.size(2);
    TORCH_CHECK(t.device() == q.device() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 3 &&
                    t.size(0) == B && t.size(1) == H && t.size(2) == L,
                name, " must be a contiguous fp32 (B, H, L) = (", B, ", ", H, ", ", L, ") tensor on ", q.device(),
                ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

// Pointers to each table inside the packed int32 buffer.
struct TablePointers {
    int const *row_lo, *row_hi, *row_start, *row_end, *col_offsets, *col_num_full, *col_start, *col_end, *programs;
    int num_programs;
};

inline TablePointers check_tables(TileTables const& t, at::Tensor const& q, char const* what) {
    at::Tensor const& b = t.buffer;
    TORCH_CHECK_VALUE(b.defined() && b.device() == q.device() && b.scalar_type() == at::kInt && b.is_contiguous()
                          && b.dim() == 1,
                      what, ".buffer must be a contiguous 1-d int32 tensor on ", q.device(), " (TileMask metadata)");
    int64_t const L = q.size(2);
    TORCH_CHECK_VALUE(t.length == L, what, ": the tables were built for L = ", t.length, " but q has L = ", L);
    int const* base = b.data_ptr<int>();
    auto table = [&](int64_t offset, int64_t count, char const* name) {
        TORCH_CHECK_VALUE(offset >= 0 && count >= 0 && offset + count <= b.numel(), what, ".", name, " (offset ",
                          offset, ", ", count, " entries) lies outside the buffer of ", b.numel());
        return base + offset;
    };
    int64_t const T = t.row_tiles;
    return {table(t.row_lo, L, "row_lo"), table(t.row_hi, L, "row_hi"), table(t.row_start, T, "row_start"),
            table(t.row_end, T, "row_end"), table(t.col_offsets, T + 1, "col_offsets"),
            table(t.col_num_full, T, "col_num_full"), table(t.col_start, t.visits, "col_start"),
            table(t.col_end, t.visits, "col_end"), table(t.programs, 2 * t.num_programs, "programs"),
            int(t.num_programs)};
}

// A program table alone (CudaBackward::pairs): (num_programs, 2) int32 rows inside the buffer.
inline int const* check_programs(TileTables const& t, at::Tensor const& q, char const* what) {
    at::Tensor const& b = t.buffer;
    TORCH_CHECK_VALUE(b.defined() && b.device() == q.device() && b.scalar_type() == at::kInt && b.is_contiguous()
                          && b.dim() == 1,
                      what, ".buffer must be a contiguous 1-d int32 tensor on ", q.device(), " (a program table)");
    TORCH_CHECK_VALUE(t.programs >= 0 && t.num_programs >= 0 && t.programs + 2 * t.num_programs <= b.numel(), what,
                      ".programs (offset ", t.programs, ", ", t.num_programs, " rows) lies outside the buffer of ",
                      b.numel());
    return b.data_ptr<int>() + t.programs;
}

struct DeviceInfo {
    int major, minor, sm_count;
};

inline DeviceInfo device_info(int device) {
    static std::vector<DeviceInfo> cache;
    if (device >= int(cache.size())) { cache.resize(device + 1, DeviceInfo{-1, -1, 0}); }
    if (cache[device].major < 0) {
        cudaDeviceProp prop;
        check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        cache[device] = {prop.major, prop.minor, prop.multiProcessorCount};
    }
    return cache[device];
}

// The kernels of arch (90: sm90a, needs an sm90 GPU; 80: sm80, runs on sm80 and later) can run on q's device.
inline void check_arch(int64_t arch, at::Tensor const& q, char const* pass) {
    TORCH_CHECK_VALUE(arch == 90 || arch == 80, "arch must be 90 (the sm90a kernels) or 80 (the sm80 kernels), got ",
                      arch);
    DeviceInfo const info = device_info(q.get_device());
    bool const ok = arch == 90 ? info.major == 9 && info.minor == 0 : info.major >= 8;
    TORCH_CHECK(ok, "the CUDA ", pass, " for sm", arch, " cannot run on device ", q.get_device(), ", which is sm",
                info.major, info.minor, arch == 90 ? " (it needs sm90, Hopper)" : " (it needs sm80 or later)");
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

}  // namespace hmar::detail
