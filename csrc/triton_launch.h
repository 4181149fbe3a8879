// Launching Triton-compiled kernels from C++ (torch-free).
//
// A Triton kernel's parameters, once compiled, are plain: pointers, 32/64-bit ints, fp32, and for each host-side
// tensor descriptor a 128-byte CUtensorMap followed by the tensor's shape (int32 each) and strides (int64 each);
// constexpr and specialised (== 1) arguments are gone; two scratch pointers close the list. Python reads that
// list from the compiled kernel (hmar_kernels/backends/native.py) and describes each parameter with a ParamCode:
// where its value comes from at launch time (a tensor slot, or a constant fixed when the plan was built).
// check_params compares the codes with the parameter sizes the driver reports for the cubin, so that a Triton
// whose ABI differs is refused at registration, never launched with a wrong parameter block.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hmar {

// Tensors a launch can read, by slot; hmar_kernels/backends/native.py's SLOTS lists the same names in this order.
enum Slot : int { kQ, kK, kV, kOut, kLse, kDout, kDelta, kDq, kDk, kDv, kNumSlots };

constexpr int kMaxRank = 4;

// One tensor of a launch: device address, sizes and strides in elements, element size in bytes.
struct TensorRef {
    void* data = nullptr;
    int rank = 0;
    int64_t sizes[kMaxRank] = {};
    int64_t strides[kMaxRank] = {};
    int element_size = 0;
};

struct ParamCode {
    enum Kind : int {
        kTensorPointer = 0,  // slot: the tensor's address
        kPointer = 1,        // value: a fixed address (schedule tables, null scratch)
        kInt32 = 2,          // value
        kInt64 = 3,          // value
        kFloat32 = 4,        // value: the float's bits
        kTensorMap = 5,      // slot, swizzle, element type (driver enum), box (rank values, outermost first)
        kShape = 6,          // slot, dim: int32 size (the descriptor's shape, as Triton passes it)
        kStride = 7,         // slot, dim: int64 stride in elements (size-1 dims: the innermost size)
    };
    Kind kind;
    int slot = 0;
    int dim = 0;
    int64_t value = 0;
    int swizzle = 0;
    int element_type = 0;
    int rank = 0;
    uint32_t box[kMaxRank] = {};

    // From Python's flat form: (kind, ...) as documented on each Kind.
    static ParamCode parse(std::vector<int64_t> const& code);
    // Bytes of the kernel parameter this code fills.
    size_t bytes() const;
};

struct TritonKernel {
    CUfunction function = nullptr;
    unsigned threads = 0;        // 32 · num_warps
    unsigned shared_bytes = 0;   // dynamic shared memory (Triton has already raised the function's limit)
    unsigned grid[3] = {1, 1, 1};
    std::vector<ParamCode> params;
};

// "" when the driver's parameter list of kernel.function (count and sizes) matches kernel.params, else why not.
std::string check_params(TritonKernel const& kernel);

// Makes the primary context of CUDA device `device` current on the calling thread, if another (or none) is. The
// autograd engine runs a backward on its own device thread, which may have no current context (the CUDA runtime
// binds one lazily on its first call; the driver's cuLaunchKernel needs one). Returns "" or the CUDA error.
std::string make_context_current(int device);

// Launches kernel on stream (of CUDA device `device`) with tensors[slot] as the slot tensors. Returns "" or the
// CUDA error.
std::string launch(TritonKernel const& kernel, int device, CUstream stream, TensorRef const* tensors);

}  // namespace hmar
