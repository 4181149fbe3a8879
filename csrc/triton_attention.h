// The Triton backend's kernels under a C++ autograd Function (triton_attention.cpp); bound in api.cpp.
#pragma once

#include <torch/extension.h>

#include <vector>

// Registers the forward, backward-preprocess and backward kernels of one plan; returns its id.
// launches[i]: (CUfunction, threads, dynamic shared bytes, grid x, y, z); codes[i]: one ParamCode per kernel
// parameter (csrc/triton_launch.h); tables: tensors whose addresses the codes hold; like: a (B, H, L, D) tensor with
// the plan's shape, dtype and device; poison: NaN-fill outputs before the kernels write them.
int64_t register_triton_plan(std::vector<std::vector<int64_t>> const& launches,
                             std::vector<std::vector<std::vector<int64_t>>> const& codes,
                             std::vector<at::Tensor> const& tables, at::Tensor const& like, bool poison);

// out (B, H, L, D) of q, k, v (B, H, L, D) under plan plan_id; differentiable in q, k and v.
at::Tensor triton_attention(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, int64_t plan_id);
