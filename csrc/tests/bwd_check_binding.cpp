// Standalone binding of the sm90a backward for bench/bwd_check_sm90.py: checks the tensors, fills BwdParams and
// calls run_bwd (bwd_dispatch.cpp), with no dependency on the main extension (api.cpp). The caller passes its
// current CUDA stream as an integer, so only CPU-side torch headers are needed.
#include <torch/extension.h>

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <tuple>
#include <vector>

#include "bwd_tile_size.h"
#include "flash_bwd.h"

namespace {

void check_input(at::Tensor const& t, char const* name, at::Tensor const& q) {
    TORCH_CHECK(t.is_cuda() && t.dim() == 4 && t.sizes() == q.sizes(), name, " must be a CUDA (B, H, L, D) tensor "
                "shaped like q ", q.sizes(), ", got ", t.sizes(), " on ", t.device());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " has dtype ", t.scalar_type(), ", q ", q.scalar_type());
    TORCH_CHECK(t.stride(3) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
                " needs unit stride on D and a 16-byte aligned base");
    for (int d = 0; d < 3; ++d) {
        TORCH_CHECK(t.size(d) == 1 || t.stride(d) % 8 == 0, name, " strides must be multiples of 8, got ",
                    t.strides());
    }
}

hmar::BwdTables tables_of(std::vector<at::Tensor> const& t, at::Tensor const& q, char const* name) {
    TORCH_CHECK(t.size() == 9, name, " must hold the 8 TileMask kernel tensors and the program table, got ",
                t.size(), " tensors");
    for (auto const& x : t) {
        TORCH_CHECK(x.device() == q.device() && x.scalar_type() == at::kInt && x.is_contiguous(), name,
                    " tensors must be contiguous int32 on ", q.device());
    }
    auto p = [&](int i) { return t[i].data_ptr<int>(); };
    return {p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), int(t[8].size(0))};
}

hmar::BwdConfigInfo config_info_checked(int64_t head_dim, int64_t config) {
    try {
        return hmar::bwd_config_info(int(head_dim), int(config));
    } catch (std::invalid_argument const& e) {
        TORCH_CHECK_VALUE(false, "hmar backward: ", e.what());
    }
}

// Returns (dq, dk, dv). kv_tables: the transposed pattern's TileMask (rows = keys) + its program table; q_tables:
// the forward pattern's TileMask (rows = queries) + its program table; both built with config_info(D, config)'s
// (rows, cols); pair_programs: launch_order over both (see BwdParams), read by paired configs.
std::vector<at::Tensor> bwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& out,
                            at::Tensor const& dout, at::Tensor const& lse, std::vector<at::Tensor> const& kv_tables,
                            std::vector<at::Tensor> const& q_tables, at::Tensor const& pair_programs,
                            double softmax_scale, int64_t config, int64_t stream) {
    check_input(q, "q", q);
    check_input(k, "k", q);
    check_input(v, "v", q);
    check_input(out, "out", q);
    check_input(dout, "dout", q);
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, "q must be bf16 or fp16");
    int64_t const B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    hmar::BwdConfigInfo const info = config_info_checked(D, config);
    TORCH_CHECK(lse.is_cuda() && lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                lse.sizes() == at::IntArrayRef({B, H, L}), "lse must be contiguous fp32 (B, H, L)");
    auto opts = q.options();
    at::Tensor dq = at::empty({B, H, L, D}, opts), dk = at::empty({B, H, L, D}, opts),
               dv = at::empty({B, H, L, D}, opts);
    at::Tensor delta = at::empty({B, H, L}, opts.dtype(at::kFloat));
    at::Tensor lse_log2 = at::empty({B, H, L}, opts.dtype(at::kFloat));
    at::Tensor dq_accum = info.needs_dq_accum ? at::empty({B, H, L + info.block_cols, D}, opts.dtype(at::kFloat))
                                               : at::Tensor();

    hmar::BwdParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.out = out.data_ptr();
    p.dout = dout.data_ptr();
    auto strides = [](at::Tensor const& t, int64_t& b, int64_t& h, int64_t& r) {
        b = t.stride(0);
        h = t.stride(1);
        r = t.stride(2);
    };
    strides(q, p.q_batch_stride, p.q_head_stride, p.q_row_stride);
    strides(k, p.k_batch_stride, p.k_head_stride, p.k_row_stride);
    strides(v, p.v_batch_stride, p.v_head_stride, p.v_row_stride);
    strides(out, p.o_batch_stride, p.o_head_stride, p.o_row_stride);
    strides(dout, p.do_batch_stride, p.do_head_stride, p.do_row_stride);
    p.lse = lse.data_ptr<float>();
    p.dq = dq.data_ptr();
    p.dk = dk.data_ptr();
    p.dv = dv.data_ptr();
    strides(dq, p.dq_batch_stride, p.dq_head_stride, p.dq_row_stride);
    strides(dk, p.dk_batch_stride, p.dk_head_stride, p.dk_row_stride);
    strides(dv, p.dv_batch_stride, p.dv_head_stride, p.dv_row_stride);
    p.delta = delta.data_ptr<float>();
    p.lse_log2 = lse_log2.data_ptr<float>();
    p.dq_accum = info.needs_dq_accum ? dq_accum.data_ptr<float>() : nullptr;
    p.batch = int(B);
    p.heads = int(H);
    p.seqlen = int(L);
    p.head_dim = int(D);
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    p.softmax_scale = float(softmax_scale);
    p.softmax_scale_log2 = float(softmax_scale * 1.4426950408889634);
    p.kv = tables_of(kv_tables, q, "kv_tables");
    p.q_tables = tables_of(q_tables, q, "q_tables");
    TORCH_CHECK(pair_programs.device() == q.device() && pair_programs.scalar_type() == at::kInt &&
                pair_programs.is_contiguous() && pair_programs.dim() == 2 && pair_programs.size(1) == 2,
                "pair_programs must be a contiguous int32 (P, 2) program table on ", q.device());
    p.pair_programs = pair_programs.data_ptr<int>();
    p.num_pair_programs = int(pair_programs.size(0));
    p.config = int(config);
    int device = -1;
    cudaGetDevice(&device);
    TORCH_CHECK(device == q.device().index(), "call with q's device current (torch.cuda.device(q.device))");
    try {
        hmar::run_bwd(p, reinterpret_cast<cudaStream_t>(stream));
    } catch (std::invalid_argument const& e) {
        TORCH_CHECK_VALUE(false, "hmar backward: ", e.what());
    }
    cudaError_t const status = cudaGetLastError();
    TORCH_CHECK(status == cudaSuccess, "hmar backward launch failed: ", cudaGetErrorString(status));
    return {dq, dk, dv};
}

// (block_rows, block_cols, deterministic) of a config.
std::tuple<int64_t, int64_t, bool> config_info(int64_t head_dim, int64_t config) {
    hmar::BwdConfigInfo const info = config_info_checked(head_dim, config);
    return std::make_tuple(int64_t(info.block_rows), int64_t(info.block_cols), info.deterministic);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bwd", &bwd, "sm90a block-sparse attention backward: (dq, dk, dv)");
    m.def("config_info", &config_info, "(rows, cols, deterministic) of a backward config: rows and cols are the "
          "TileMasks' tile shape");
    m.attr("num_configs") = hmar::kNumBwdConfigsSm90;
}
