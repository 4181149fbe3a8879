// CuTe builds TMA descriptors with cuTensorMapEncodeTiled (4 per launch). By default CUTLASS looks the driver
// function up with cudaGetDriverEntryPointByVersion on every call; with CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL
// (set in hmar_kernels/_build.py and CMakeLists.txt) it calls the symbol directly, and this file provides it:
// hidden, so it binds inside this library, resolving the driver's entry point once. No link to libcuda needed.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

extern "C" __attribute__((visibility("hidden"))) CUresult CUDAAPI cuTensorMapEncodeTiled(
    CUtensorMap* tensor_map, CUtensorMapDataType data_type, cuuint32_t rank, void* global_address,
    cuuint64_t const* global_dim, cuuint64_t const* global_strides, cuuint32_t const* box_dim,
    cuuint32_t const* element_strides, CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
    CUtensorMapL2promotion l2_promotion, CUtensorMapFloatOOBfill oob_fill) {
    static PFN_cuTensorMapEncodeTiled_v12000 const encode = [] {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult status;
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &status);
        return status == cudaDriverEntryPointSuccess ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)
                                                     : nullptr;
    }();
    if (encode == nullptr) { return CUDA_ERROR_NOT_FOUND; }
    return encode(tensor_map, data_type, rank, global_address, global_dim, global_strides, box_dim, element_strides,
                  interleave, swizzle, l2_promotion, oob_fill);
}
