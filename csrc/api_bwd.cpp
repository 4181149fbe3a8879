// The C++ backward API (api.h): checks the tensors, allocates the fp32 workspaces, fills BwdParams (sm90a,
// bwd_dispatch.cpp) or BwdParamsSm80 (bwd_dispatch_sm80.cpp) and calls the dispatcher. Like api.cpp, only
// CPU-side torch headers: the caller passes its current CUDA stream as an integer.
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <tuple>

#include "api.h"
#include "api_common.h"
#include "bwd_tile_size.h"
#include "flash_bwd.h"
#include "flash_sm80.h"

namespace hmar {

using namespace detail;

namespace {

BwdTables bwd_tables(TablePointers const& t) {
    return {t.row_lo,    t.row_hi,  t.row_start, t.row_end,  t.col_offsets,
            t.col_num_full, t.col_start, t.col_end, t.programs, t.num_programs};
}

BwdConfigInfo config_info(int64_t head_dim, int64_t config) {
    try {
        return bwd_config_info(int(head_dim), int(config));
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, "hmar_kernels CUDA backward: ", error.what());
    }
}

// The strides of a (B, H, L, D) tensor, as the kernels read them.
struct Strides {
    int64_t batch, head, row;
};
Strides strides(at::Tensor const& t) { return {tma_stride(t, 0), tma_stride(t, 1), tma_stride(t, 2)}; }

// The fields BwdParams (sm90a) and BwdParamsSm80 share: the tensors' pointers and strides, the shape, the dtype
// and the softmax scale.
template <class Params>
void fill_common(Params& p, at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& out,
                 at::Tensor const& dout, at::Tensor const& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                 double softmax_scale) {
    p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.out = out.data_ptr(), p.dout = dout.data_ptr();
    p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
    Strides s = strides(q);
    p.q_batch_stride = s.batch, p.q_head_stride = s.head, p.q_row_stride = s.row;
    s = strides(k), p.k_batch_stride = s.batch, p.k_head_stride = s.head, p.k_row_stride = s.row;
    s = strides(v), p.v_batch_stride = s.batch, p.v_head_stride = s.head, p.v_row_stride = s.row;
    s = strides(out), p.o_batch_stride = s.batch, p.o_head_stride = s.head, p.o_row_stride = s.row;
    s = strides(dout), p.do_batch_stride = s.batch, p.do_head_stride = s.head, p.do_row_stride = s.row;
    s = strides(dq), p.dq_batch_stride = s.batch, p.dq_head_stride = s.head, p.dq_row_stride = s.row;
    s = strides(dk), p.dk_batch_stride = s.batch, p.dk_head_stride = s.head, p.dk_row_stride = s.row;
    s = strides(dv), p.dv_batch_stride = s.batch, p.dv_head_stride = s.head, p.dv_row_stride = s.row;
    p.lse = lse.data_ptr<float>();
    p.batch = int(q.size(0)), p.heads = int(q.size(1)), p.seqlen = int(q.size(2)), p.head_dim = int(q.size(3));
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    p.softmax_scale = float(softmax_scale);
    p.softmax_scale_log2 = float(softmax_scale * 1.4426950408889634);
}

void run_sm90(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& out,
              at::Tensor const& dout, at::Tensor const& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
              CudaBackward const& args, cudaStream_t stream) {
    int64_t const B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    BwdConfigInfo const info = config_info(D, args.config);
    auto const floats = q.options().dtype(at::kFloat);
    at::Tensor delta = at::empty({B, H, L}, floats), lse_log2 = at::empty({B, H, L}, floats);
    at::Tensor dq_accum = info.needs_dq_accum ? at::empty({B, H, L + info.block_cols, D}, floats) : at::Tensor();
    BwdParams p{};
    fill_common(p, q, k, v, out, dout, lse, dq, dk, dv, args.softmax_scale);
    p.delta = delta.data_ptr<float>();
    p.lse_log2 = lse_log2.data_ptr<float>();
    p.dq_accum = info.needs_dq_accum ? dq_accum.data_ptr<float>() : nullptr;
    p.kv = bwd_tables(check_tables(args.kv, q, "kv tables"));
    p.q_tables = bwd_tables(check_tables(args.q, q, "q tables"));
    if (info.paired) {
        p.pair_programs = check_programs(args.pairs, q, "pairs");
        p.num_pair_programs = int(args.pairs.num_programs);
    }
    p.config = int(args.config);
    run_bwd(p, stream);
}

void run_sm80(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& out,
              at::Tensor const& dout, at::Tensor const& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
              CudaBackward const& args, cudaStream_t stream) {
    int64_t const B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    auto const floats = q.options().dtype(at::kFloat);
    at::Tensor delta = at::empty({B, H, L}, floats), dq_accum = at::empty({B, H, L, D}, floats);
    BwdParamsSm80 p{};
    fill_common(p, q, k, v, out, dout, lse, dq, dk, dv, args.softmax_scale);
    p.delta = delta.data_ptr<float>();
    p.dq_accum = dq_accum.data_ptr<float>();
    TablePointers const t = check_tables(args.kv, q, "kv tables");
    p.row_lo = t.row_lo, p.row_hi = t.row_hi, p.row_start = t.row_start, p.row_end = t.row_end;
    p.col_offsets = t.col_offsets, p.col_num_full = t.col_num_full, p.col_start = t.col_start;
    p.col_end = t.col_end, p.programs = t.programs, p.num_programs = t.num_programs;
    run_bwd_sm80(p, stream);
}

}  // namespace

void bwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& out,
         at::Tensor const& dout, at::Tensor const& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
         CudaBackward const& args, int64_t stream) {
    TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor, got device ", q.device());
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                "q must be bf16 or fp16 for the CUDA kernels, got ", q.scalar_type());
    check_qkv(q, "q", q);
    for (auto const& [t, name] : {std::pair{&k, "k"}, {&v, "v"}, {&out, "out"}, {&dout, "dout"}}) {
        check_qkv(*t, name, q);
    }
    for (auto const& [t, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}}) { check_qkv(*t, name, q); }
    check_rows(lse, "lse", q);
    TORCH_CHECK(q.size(0) * q.size(1) < (int64_t(1) << 31) && q.size(2) < (int64_t(1) << 31),
                "B·H and L must fit in int32");
    check_arch(args.arch, q, "backward");
    DeviceScope scope(q.get_device());
    auto const cuda_stream = reinterpret_cast<cudaStream_t>(stream);
    try {
        if (args.arch == 80) {
            run_sm80(q, k, v, out, dout, lse, dq, dk, dv, args, cuda_stream);
        } else {
            run_sm90(q, k, v, out, dout, lse, dq, dk, dv, args, cuda_stream);
        }
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, "hmar_kernels CUDA backward: ", error.what());
    } catch (std::runtime_error const& error) {  // e.g. the sm80 kernel needs more shared memory than the GPU has
        TORCH_CHECK(false, "hmar_kernels CUDA backward: ", error.what());
    }
    check_cuda(cudaGetLastError(), "backward kernel launch");
}

std::tuple<int64_t, int64_t, bool, bool> bwd_tile(int64_t head_dim, int64_t config) {
    BwdConfigInfo const info = config_info(head_dim, config);
    return {info.block_rows, info.block_cols, info.deterministic, info.paired};
}

}  // namespace hmar
