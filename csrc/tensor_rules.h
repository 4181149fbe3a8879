// The tensor-layout rules the kernels rely on, over plain sizes and strides (no torch, no CUDA), so that the C++ API
// (api_common.h), the C++ launcher of the Triton kernels (triton_launch.cpp, native_attention.cpp) and a host-only
// parity test share one copy. The Python launchers, which also run without the extension, apply the same rules in
// hmar_kernels/buffers.py (tma_readable) and backends/triton/cached_launch.py (descriptor);
// tests/test_tensor_rules.py compiles this header on the host and holds the two languages together.
#pragma once

#include <cstdint>

namespace hmar {

// The stride (in elements) a kernel or a tensor map is given for dimension dim of a tensor: 1 for the innermost
// dimension; for a dimension of size 1, which no index ever steps along, the innermost size (TMA wants a multiple
// of 16 bytes, which the innermost size is wherever the tensor is TMA-readable: see below); else its stride.
inline int64_t kernel_stride(int64_t const* sizes, int64_t const* strides, int rank, int dim) {
    if (dim == rank - 1) { return 1; }
    return sizes[dim] > 1 ? strides[dim] : sizes[rank - 1];
}

// Whether TMA (and the kernels' 16-byte vector loads) can read a tensor in place: unit stride on the innermost
// dimension, a 16-byte aligned address, and strides of 16-byte multiples on every other dimension of size > 1.
// A tensor that fails is copied contiguous first.
inline bool tma_readable_layout(int64_t const* sizes, int64_t const* strides, int rank, int64_t element_size,
                                uintptr_t address) {
    if (rank == 0 || strides[rank - 1] != 1 || address % 16 != 0) { return false; }
    for (int d = 0; d + 1 < rank; ++d) {
        if (sizes[d] > 1 && (strides[d] * element_size) % 16 != 0) { return false; }
    }
    return true;
}

}  // namespace hmar
