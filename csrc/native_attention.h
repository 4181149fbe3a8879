// The kernel backends' forward + backward as one C++ autograd Function (native_attention.cpp); bound in
// bindings.cpp. Python (hmar_kernels/backends/native.py) describes each plan's kernels with the structs below.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

#include "api.h"

namespace hmar {

// One Triton-compiled kernel as Python found it: the CUfunction, its launch shape, and one ParamCode per kernel
// parameter (triton_launch.h; the flat form ParamCode::parse reads).
struct TritonKernelSpec {
    int64_t function = 0;  // CUfunction
    int64_t threads = 0;  // 32 · num_warps
    int64_t shared_bytes = 0;  // dynamic shared memory
    std::vector<int64_t> grid;  // (x, y, z)
    std::vector<std::vector<int64_t>> codes;
};

// The kernels of one (backend, schedule, pattern, shape, dtype, device, options), each pass one kind of kernel:
// the forward is a Triton kernel or the CUDA forward (sm90a or sm80: CudaForward::arch), the backward the Triton
// delta preprocess + backward or the CUDA backward (CudaBackward::arch).
struct PlanSpec {
    std::optional<TritonKernelSpec> triton_forward;
    std::optional<CudaForward> cuda_forward;  // exactly one of the two forwards
    std::optional<CudaBackward> cuda_backward;  // set: the CUDA backward; unset: preprocess + backward below
    TritonKernelSpec preprocess, backward;
    std::vector<at::Tensor> tables;  // tensors whose addresses the codes hold: kept alive with the plan
    at::Tensor like;  // a (B, H, L, D) tensor with the plan's shape, dtype and device
    bool poison = false;  // NaN-fill outputs before the kernels write them (tests)
};

// Registers one plan; returns its id. Checks every Triton kernel's codes against its cubin's parameters.
int64_t register_plan(PlanSpec const& spec);

// out (B, H, L, D) of q, k, v (B, H, L, D) under plan plan_id; differentiable in q, k and v.
at::Tensor native_attention(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, int64_t plan_id);

}  // namespace hmar
