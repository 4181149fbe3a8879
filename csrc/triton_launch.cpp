// Launching Triton-compiled kernels from C++: see triton_launch.h. Driver functions are resolved once through the
// runtime's entry-point query (no link to libcuda), as cuda_driver.cpp does for cuTensorMapEncodeTiled.
#include "triton_launch.h"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstring>
#include <stdexcept>

#include "tensor_rules.h"

namespace hmar {
namespace {

template <typename Fn>
Fn driver_function(char const* name, int version) {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
        return nullptr;
    }
    return reinterpret_cast<Fn>(fn);
}

std::string driver_error(char const* what, CUresult status) {
    static auto const error_string = driver_function<PFN_cuGetErrorString_v6000>("cuGetErrorString", 6000);
    char const* text = nullptr;
    if (error_string != nullptr) { error_string(status, &text); }
    return std::string(what) + ": " + (text != nullptr ? text : "CUDA driver error " + std::to_string(status));
}

// Values of one launch's parameters: cuLaunchKernel reads each through a pointer into this block.
struct ParamBlock {
    static constexpr int kMaxMaps = 8;
    static constexpr int kMaxScalars = 96;
    alignas(64) CUtensorMap maps[kMaxMaps];
    int64_t scalars[kMaxScalars];  // one 8-byte cell per scalar (int32/fp32 use the low 4 bytes)
    void* pointers[kMaxMaps + kMaxScalars];
};

// Stride of dimension dim in elements as a tensor descriptor carries it (tensor_rules.h).
int64_t descriptor_stride(TensorRef const& t, int dim) { return kernel_stride(t.sizes, t.strides, t.rank, dim); }

// The tensor map Triton's fill_tma_descriptor builds for a descriptor over t with box `code.box`.
std::string encode_tensor_map(CUtensorMap* map, ParamCode const& code, TensorRef const& t) {
    cuuint64_t dims[kMaxRank], strides[kMaxRank];
    cuuint32_t box[kMaxRank], element_strides[kMaxRank];
    int const rank = code.rank;
    for (int i = 0; i < rank; ++i) {  // the driver lists dimensions innermost first
        dims[i] = cuuint64_t(t.sizes[rank - 1 - i]);
        box[i] = code.box[rank - 1 - i];
        element_strides[i] = 1;
    }
    for (int i = 0; i + 1 < rank; ++i) {  // byte strides of all but the innermost dimension
        strides[i] = cuuint64_t(descriptor_stride(t, rank - 2 - i) * t.element_size);
    }
    CUresult const status = cuTensorMapEncodeTiled(
        map, CUtensorMapDataType(code.element_type), cuuint32_t(rank), t.data, dims, strides, box, element_strides,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CUtensorMapSwizzle(code.swizzle), CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return status == CUDA_SUCCESS ? "" : driver_error("cuTensorMapEncodeTiled", status);
}

}  // namespace

ParamCode ParamCode::parse(std::vector<int64_t> const& code) {
    auto need = [&](size_t n) {
        if (code.size() != n) {
            throw std::invalid_argument("parameter code of kind " + std::to_string(code.at(0)) + " needs " +
                                        std::to_string(n) + " values, got " + std::to_string(code.size()));
        }
    };
    if (code.empty()) { throw std::invalid_argument("empty parameter code"); }
    ParamCode p{Kind(code[0])};
    auto slot = [&](int64_t s) {
        if (s < 0 || s >= kNumSlots) { throw std::invalid_argument("tensor slot out of range: " + std::to_string(s)); }
        return int(s);
    };
    switch (p.kind) {
        case kTensorPointer: need(2), p.slot = slot(code[1]); break;
        case kPointer: case kInt32: case kInt64: case kFloat32: need(2), p.value = code[1]; break;
        case kShape: case kStride:
            need(3), p.slot = slot(code[1]), p.dim = int(code[2]);
            if (p.dim < 0 || p.dim >= kMaxRank) { throw std::invalid_argument("dimension out of range"); }
            break;
        case kTensorMap: {
            if (code.size() < 5 || code.size() > 4 + kMaxRank) {
                throw std::invalid_argument("tensor map code needs (kind, slot, swizzle, type, box...)");
            }
            p.slot = slot(code[1]), p.swizzle = int(code[2]), p.element_type = int(code[3]);
            p.rank = int(code.size()) - 4;
            for (int i = 0; i < p.rank; ++i) { p.box[i] = uint32_t(code[4 + i]); }
            break;
        }
        default: throw std::invalid_argument("unknown parameter code kind " + std::to_string(code[0]));
    }
    return p;
}

size_t ParamCode::bytes() const {
    switch (kind) {
        case kTensorMap: return sizeof(CUtensorMap);
        case kInt32: case kFloat32: case kShape: return 4;
        default: return 8;
    }
}

std::string check_params(TritonKernel const& kernel) {
    static auto const param_info = driver_function<PFN_cuFuncGetParamInfo_v12040>("cuFuncGetParamInfo", 12040);
    if (param_info == nullptr) { return "the CUDA driver lacks cuFuncGetParamInfo (needs 12.4 or newer)"; }
    int maps = 0, scalars = 0;
    for (size_t i = 0; i < kernel.params.size(); ++i) {
        size_t offset = 0, size = 0;
        CUresult const status = param_info(kernel.function, i, &offset, &size);
        if (status != CUDA_SUCCESS) {
            return "the kernel has " + std::to_string(i) + " parameters, the codes describe " +
                   std::to_string(kernel.params.size());
        }
        if (size != kernel.params[i].bytes()) {
            return "parameter " + std::to_string(i) + " is " + std::to_string(size) + " bytes, its code (kind " +
                   std::to_string(kernel.params[i].kind) + ") fills " + std::to_string(kernel.params[i].bytes());
        }
        (kernel.params[i].kind == ParamCode::kTensorMap ? maps : scalars) += 1;
    }
    size_t offset = 0, size = 0;
    if (param_info(kernel.function, kernel.params.size(), &offset, &size) == CUDA_SUCCESS) {
        return "the kernel has more parameters than the " + std::to_string(kernel.params.size()) + " codes";
    }
    if (maps > ParamBlock::kMaxMaps || scalars > ParamBlock::kMaxScalars) {
        return "too many parameters for the launch block";
    }
    return "";
}

std::string make_context_current(int device) {
    static auto const get_current = driver_function<PFN_cuCtxGetCurrent_v4000>("cuCtxGetCurrent", 4000);
    static auto const set_current = driver_function<PFN_cuCtxSetCurrent_v4000>("cuCtxSetCurrent", 4000);
    static auto const get_device = driver_function<PFN_cuDeviceGet_v2000>("cuDeviceGet", 2000);
    static auto const retain = driver_function<PFN_cuDevicePrimaryCtxRetain_v7000>("cuDevicePrimaryCtxRetain", 7000);
    if (get_current == nullptr || set_current == nullptr || get_device == nullptr || retain == nullptr) {
        return "the CUDA driver lacks the context functions";
    }
    constexpr int kMaxDevices = 64;
    if (device < 0 || device >= kMaxDevices) { return "device index out of range: " + std::to_string(device); }
    // One retained primary context per device, kept for the process (as the CUDA runtime keeps it).
    static std::atomic<CUcontext> primary[kMaxDevices] = {};
    CUcontext context = primary[device].load(std::memory_order_acquire);
    if (context == nullptr) {
        CUdevice handle;
        CUresult status = get_device(&handle, device);
        if (status != CUDA_SUCCESS) { return driver_error("cuDeviceGet", status); }
        status = retain(&context, handle);
        if (status != CUDA_SUCCESS) { return driver_error("cuDevicePrimaryCtxRetain", status); }
        CUcontext expected = nullptr;
        if (!primary[device].compare_exchange_strong(expected, context)) { context = expected; }
    }
    CUcontext current = nullptr;
    CUresult status = get_current(&current);
    if (status != CUDA_SUCCESS) { return driver_error("cuCtxGetCurrent", status); }
    if (current == context) { return ""; }
    status = set_current(context);
    return status == CUDA_SUCCESS ? "" : driver_error("cuCtxSetCurrent", status);
}

std::string launch(TritonKernel const& kernel, int device, CUstream stream, TensorRef const* tensors) {
    static auto const launch_kernel = driver_function<PFN_cuLaunchKernel_v4000>("cuLaunchKernel", 4000);
    if (launch_kernel == nullptr) { return "cuLaunchKernel not found in the CUDA driver"; }
    std::string const context_error = make_context_current(device);
    if (!context_error.empty()) { return context_error; }
    ParamBlock block;
    int maps = 0, scalars = 0, n = 0;
    for (ParamCode const& p : kernel.params) {
        if (p.kind == ParamCode::kTensorMap) {
            std::string const error = encode_tensor_map(&block.maps[maps], p, tensors[p.slot]);
            if (!error.empty()) { return error; }
            block.pointers[n++] = &block.maps[maps++];
            continue;
        }
        int64_t* cell = &block.scalars[scalars++];
        *cell = 0;
        TensorRef const& t = tensors[p.slot];
        switch (p.kind) {
            case ParamCode::kTensorPointer: std::memcpy(cell, &t.data, sizeof(void*)); break;
            case ParamCode::kInt32: case ParamCode::kFloat32: {
                uint32_t const low = uint32_t(p.value);
                std::memcpy(cell, &low, 4);
                break;
            }
            case ParamCode::kShape: {
                int32_t const size = int32_t(t.sizes[p.dim]);
                std::memcpy(cell, &size, 4);
                break;
            }
            case ParamCode::kStride: *cell = descriptor_stride(t, p.dim); break;
            default: *cell = p.value; break;  // kPointer, kInt64
        }
        block.pointers[n++] = cell;
    }
    CUresult const status = launch_kernel(kernel.function, kernel.grid[0], kernel.grid[1], kernel.grid[2],
                                          kernel.threads, 1, 1, kernel.shared_bytes, stream, block.pointers, nullptr);
    return status == CUDA_SUCCESS ? "" : driver_error("cuLaunchKernel", status);
}

}  // namespace hmar
