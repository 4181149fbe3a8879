// The kernel backends' forward + backward as one C++ autograd Function (native_attention.cpp); bound in api.cpp.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <tuple>
#include <vector>

// The sm90 CUDA forward (api.cpp): writes out and lse. See api.cpp for the arguments.
void fwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor& out, at::Tensor& lse,
         at::Tensor const& row_lo, at::Tensor const& row_hi, at::Tensor const& row_start,
         at::Tensor const& row_end, at::Tensor const& col_offsets, at::Tensor const& col_num_full,
         at::Tensor const& col_start, at::Tensor const& col_end, at::Tensor const& programs,
         double softmax_scale, int64_t config, int64_t num_ctas, std::optional<at::Tensor> const& counter,
         int64_t stream);

// What the CUDA forward of a plan needs besides q, k, v: its 9 schedule tables (row_lo ... programs), softmax
// scale, tile config, grid size (0: one CTA per SM) and whether it schedules dynamically (a counter per stream).
using CudaForwardSpec = std::tuple<std::vector<at::Tensor>, double, int64_t, int64_t, bool>;

// Registers one plan; returns its id. launches[i]: (CUfunction, threads, dynamic shared bytes, grid x, y, z) of
// the Triton forward, backward preprocess and backward kernels; codes[i]: one ParamCode per kernel parameter
// (csrc/triton_launch.h); tables: tensors whose addresses the codes hold; like: a (B, H, L, D) tensor with the
// plan's shape, dtype and device; poison: NaN-fill outputs before the kernels write them. With cuda_forward, the
// CUDA kernel runs the forward instead and launches[0] / codes[0] must be empty.
int64_t register_plan(std::vector<std::vector<int64_t>> const& launches,
                      std::vector<std::vector<std::vector<int64_t>>> const& codes,
                      std::vector<at::Tensor> const& tables, at::Tensor const& like, bool poison,
                      std::optional<CudaForwardSpec> const& cuda_forward);

// out (B, H, L, D) of q, k, v (B, H, L, D) under plan plan_id; differentiable in q, k and v.
at::Tensor native_attention(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, int64_t plan_id);
