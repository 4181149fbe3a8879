// Self-contained torch binding of the sm80 kernels for bench/sm80_check.py (not the project's extension, which
// api.cpp builds): tensor checks naming the tensor, FwdParams / BwdParamsSm80 filled from tensors, the
// dispatchers called on the caller's stream (passed as an integer, so no c10/cuda headers).
#include <torch/extension.h>

#include <cuda_runtime_api.h>

#include <tuple>
#include <vector>

#include "flash_sm80.h"

namespace {

// cp.async and the 16-byte stores: 16-byte aligned base, unit stride on D, other strides multiples of 8 elements.
void check_bhld(at::Tensor const& t, char const* name, at::Tensor const& q) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.dim() == 4 && t.sizes() == q.sizes(), name, " must have q's shape (B, H, L, D) ", q.sizes(),
                ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " has dtype ", t.scalar_type(), " but q has ",
                q.scalar_type());
    TORCH_CHECK(t.stride(3) == 1, name, " must have unit stride on D, got strides ", t.strides());
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned");
    for (int d = 0; d < 3; ++d) {
        TORCH_CHECK(t.size(d) == 1 || t.stride(d) % 8 == 0, name, " strides must be multiples of 8 elements, got ",
                    t.strides());
    }
}

void check_float(at::Tensor const& t, char const* name, std::vector<int64_t> const& shape) {
    TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
                " must be a contiguous float32 CUDA tensor");
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), name, " must have shape ", at::IntArrayRef(shape), ", got ",
                t.sizes());
}

int const* int32_ptr(at::Tensor const& t, char const* name) {
    TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kInt && t.is_contiguous(), name,
                " must be a contiguous int32 CUDA tensor (TileMask metadata)");
    return t.data_ptr<int>();
}

// mask: the 8 TileMask tensors in KERNEL_FIELDS order, then the program table.
struct Tables {
    int const* ptr[9];
    int num_programs;
};

Tables tables(std::vector<at::Tensor> const& mask, int64_t seqlen) {
    TORCH_CHECK(mask.size() == 9, "expected the 8 TileMask tensors and the program table, got ", mask.size());
    TORCH_CHECK(mask[0].numel() == seqlen && mask[1].numel() == seqlen, "row_lo and row_hi must have L = ", seqlen,
                " entries (a TileMask of this schedule), got ", mask[0].numel(), " and ", mask[1].numel());
    TORCH_CHECK(mask[8].dim() == 2 && mask[8].size(1) == 2, "programs must be a (P, 2) table, got ",
                mask[8].sizes());
    static char const* names[9] = {"row_lo",  "row_hi",       "row_start", "row_end", "col_offsets",
                                   "col_num_full", "col_start", "col_end", "programs"};
    Tables t;
    for (int i = 0; i < 9; ++i) { t.ptr[i] = int32_ptr(mask[i], names[i]); }
    t.num_programs = int(mask[8].size(0));
    return t;
}

void check_launch(char const* what) {
    cudaError_t const status = cudaGetLastError();
    TORCH_CHECK(status == cudaSuccess, "sm80 ", what, ": ", cudaGetErrorString(status));
}

void fwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor& out, at::Tensor& lse,
         std::vector<at::Tensor> const& mask, double softmax_scale, int64_t stream) {
    check_bhld(q, "q", q);
    check_bhld(k, "k", q);
    check_bhld(v, "v", q);
    check_bhld(out, "out", q);
    check_float(lse, "lse", {q.size(0), q.size(1), q.size(2)});
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, "q must be bf16 or fp16, got ",
                q.scalar_type());
    Tables const t = tables(mask, q.size(2));
    hmar::FwdParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.out = out.data_ptr();
    p.q_batch_stride = q.stride(0), p.q_head_stride = q.stride(1), p.q_row_stride = q.stride(2);
    p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(1), p.k_row_stride = k.stride(2);
    p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(1), p.v_row_stride = v.stride(2);
    p.o_batch_stride = out.stride(0), p.o_head_stride = out.stride(1), p.o_row_stride = out.stride(2);
    p.lse = lse.data_ptr<float>();
    p.batch = int(q.size(0)), p.heads = int(q.size(1)), p.seqlen = int(q.size(2)), p.head_dim = int(q.size(3));
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    p.softmax_scale = float(softmax_scale);
    p.softmax_scale_log2 = float(softmax_scale * 1.4426950408889634);
    p.row_lo = t.ptr[0], p.row_hi = t.ptr[1], p.row_start = t.ptr[2], p.row_end = t.ptr[3];
    p.col_offsets = t.ptr[4], p.col_num_full = t.ptr[5], p.col_start = t.ptr[6], p.col_end = t.ptr[7];
    p.programs = t.ptr[8];
    p.num_programs = t.num_programs;
    p.num_ctas = t.num_programs;
    p.scheduler_counter = nullptr;
    hmar::run_fwd_sm80(p, reinterpret_cast<cudaStream_t>(stream));
    check_launch("forward");
}

void bwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& out,
         at::Tensor const& dout, at::Tensor const& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
         at::Tensor& delta, at::Tensor& dq_accum, std::vector<at::Tensor> const& mask_t, double softmax_scale,
         int64_t stream) {
    for (auto const& [t, name] : {std::pair{q, "q"}, {k, "k"}, {v, "v"}, {out, "out"}, {dout, "dout"},
                                  {dq, "dq"}, {dk, "dk"}, {dv, "dv"}}) {
        check_bhld(t, name, q);
    }
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, "q must be bf16 or fp16, got ",
                q.scalar_type());
    check_float(lse, "lse", {q.size(0), q.size(1), q.size(2)});
    check_float(delta, "delta", {q.size(0), q.size(1), q.size(2)});
    check_float(dq_accum, "dq_accum", {q.size(0), q.size(1), q.size(2), q.size(3)});
    Tables const t = tables(mask_t, q.size(2));
    hmar::BwdParamsSm80 p{};
    p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.out = out.data_ptr(), p.dout = dout.data_ptr();
    p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
    p.q_batch_stride = q.stride(0), p.q_head_stride = q.stride(1), p.q_row_stride = q.stride(2);
    p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(1), p.k_row_stride = k.stride(2);
    p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(1), p.v_row_stride = v.stride(2);
    p.o_batch_stride = out.stride(0), p.o_head_stride = out.stride(1), p.o_row_stride = out.stride(2);
    p.do_batch_stride = dout.stride(0), p.do_head_stride = dout.stride(1), p.do_row_stride = dout.stride(2);
    p.dq_batch_stride = dq.stride(0), p.dq_head_stride = dq.stride(1), p.dq_row_stride = dq.stride(2);
    p.dk_batch_stride = dk.stride(0), p.dk_head_stride = dk.stride(1), p.dk_row_stride = dk.stride(2);
    p.dv_batch_stride = dv.stride(0), p.dv_head_stride = dv.stride(1), p.dv_row_stride = dv.stride(2);
    p.lse = lse.data_ptr<float>();
    p.delta = delta.data_ptr<float>();
    p.dq_accum = dq_accum.data_ptr<float>();
    p.batch = int(q.size(0)), p.heads = int(q.size(1)), p.seqlen = int(q.size(2)), p.head_dim = int(q.size(3));
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    p.softmax_scale = float(softmax_scale);
    p.softmax_scale_log2 = float(softmax_scale * 1.4426950408889634);
    p.row_lo = t.ptr[0], p.row_hi = t.ptr[1], p.row_start = t.ptr[2], p.row_end = t.ptr[3];
    p.col_offsets = t.ptr[4], p.col_num_full = t.ptr[5], p.col_start = t.ptr[6], p.col_end = t.ptr[7];
    p.programs = t.ptr[8];
    p.num_programs = t.num_programs;
    hmar::run_bwd_sm80(p, reinterpret_cast<cudaStream_t>(stream));
    check_launch("backward");
}

std::tuple<int64_t, int64_t, int64_t, int64_t> tile_shape(int64_t head_dim) {
    hmar::TileShapeSm80 const s = hmar::tile_shape_sm80(int(head_dim));
    return {s.fwd_block_m, s.fwd_block_n, s.bwd_block_n, s.bwd_block_m};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("fwd", &fwd, "sm80 forward: fills out (B, H, L, D) and lse (B, H, L)");
    m.def("bwd", &bwd, "sm80 backward: fills dq, dk, dv (delta, dq_accum: fp32 workspaces)");
    m.def("tile_shape", &tile_shape,
          "(fwd block_m, fwd block_n, bwd block_n, bwd block_m) the TileMasks must be built with");
}
