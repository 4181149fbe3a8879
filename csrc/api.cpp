// The C++ forward API (api.h): checks the tensors (messages name them), fills the plain FwdParams and calls the
// dispatcher of the arch (fwd_dispatch.cpp for sm90a, fwd_dispatch_sm80.cpp for sm80). bindings.cpp exposes it to
// Python (hmar_kernels/backends/cuda.py); the C++ autograd path (native_attention.cpp) calls it directly.
//
// Only CPU-side torch headers are used (no c10/cuda): the caller passes its current CUDA stream as an integer,
// so this file also compiles against a CPU build of torch (CI).
#include "api.h"

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "api_common.h"
#include "flash.h"
#include "flash_sm80.h"
#include "tile_size.h"

namespace hmar {

using namespace detail;

namespace {

// The dynamic scheduler's counter on (device, stream): two zeroed int32 that CTAs claim programs with (the kernel
// leaves them zero), one pair per stream so that concurrent launches never share one. Allocated outside torch's
// caching allocator, so that no CUDA graph's memory pool (torch.cuda.graph, torch.compile's reduce-overhead mode)
// ever holds it; kept for the process. None while the stream is being captured and no counter exists yet: the
// launch then strides statically rather than allocating inside the graph.
int* scheduler_counter(int device, cudaStream_t stream) {
    static std::mutex mutex;
    static std::map<std::pair<int, cudaStream_t>, int*> counters;
    std::lock_guard<std::mutex> lock(mutex);
    auto const found = counters.find({device, stream});
    if (found != counters.end()) { return found->second; }
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone) { return nullptr; }
    void* counter = nullptr;
    check_cuda(cudaMalloc(&counter, 2 * sizeof(int)), "cudaMalloc (scheduler counter)");
    check_cuda(cudaMemsetAsync(counter, 0, 2 * sizeof(int), stream), "cudaMemsetAsync (scheduler counter)");
    return counters[{device, stream}] = static_cast<int*>(counter);
}

}  // namespace

void fwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor& out, at::Tensor& lse,
         CudaForward const& args, int64_t stream) {
    TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor, got device ", q.device());
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                "q must be bf16 or fp16 for the CUDA kernels, got ", q.scalar_type());
    check_qkv(q, "q", q);
    check_qkv(k, "k", q);
    check_qkv(v, "v", q);
    check_qkv(out, "out", q);
    int64_t const B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    check_rows(lse, "lse", q);
    TablePointers const tables = check_tables(args.tables, q, "tables");
    TORCH_CHECK(B * H < (int64_t(1) << 31) && L < (int64_t(1) << 31), "B·H and L must fit in int32");
    check_arch(args.arch, q, "forward");
    int const device = q.get_device();
    DeviceScope scope(device);

    FwdParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.out = out.data_ptr();
    p.q_batch_stride = tma_stride(q, 0), p.q_head_stride = tma_stride(q, 1), p.q_row_stride = tma_stride(q, 2);
    p.k_batch_stride = tma_stride(k, 0), p.k_head_stride = tma_stride(k, 1), p.k_row_stride = tma_stride(k, 2);
    p.v_batch_stride = tma_stride(v, 0), p.v_head_stride = tma_stride(v, 1), p.v_row_stride = tma_stride(v, 2);
    p.o_batch_stride = tma_stride(out, 0), p.o_head_stride = tma_stride(out, 1);
    p.o_row_stride = tma_stride(out, 2);
    p.lse = lse.data_ptr<float>();
    p.batch = int(B), p.heads = int(H), p.seqlen = int(L), p.head_dim = int(D);
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    p.softmax_scale = float(args.softmax_scale);
    p.softmax_scale_log2 = float(args.softmax_scale * 1.4426950408889634);
    p.row_lo = tables.row_lo;
    p.row_hi = tables.row_hi;
    p.row_start = tables.row_start;
    p.row_end = tables.row_end;
    p.col_offsets = tables.col_offsets;
    p.col_num_full = tables.col_num_full;
    p.col_start = tables.col_start;
    p.col_end = tables.col_end;
    p.programs = tables.programs;
    p.num_programs = tables.num_programs;
    bool const sm80 = args.arch == 80;
    p.num_ctas = int(sm80 ? tables.num_programs : args.num_ctas > 0 ? args.num_ctas : device_info(device).sm_count);
    auto const cuda_stream = reinterpret_cast<cudaStream_t>(stream);
    p.scheduler_counter = args.dynamic && !sm80 ? scheduler_counter(device, cuda_stream) : nullptr;
    p.config = int(args.config);
    try {
        if (sm80) {
            run_fwd_sm80(p, cuda_stream);
        } else {
            run_fwd(p, cuda_stream);
        }
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, "hmar_kernels CUDA forward: ", error.what());
    } catch (std::runtime_error const& error) {  // e.g. the sm80 kernel needs more shared memory than the GPU has
        TORCH_CHECK(false, "hmar_kernels CUDA forward: ", error.what());
    }
    check_cuda(cudaGetLastError(), "forward kernel launch");
}

std::tuple<int64_t, int64_t> fwd_tile(int64_t head_dim, int64_t config) {
    TORCH_CHECK_VALUE(config >= 0 && config < kNumFwdConfigsSm90, "config must be in [0, ", kNumFwdConfigsSm90,
                      "), got ", config);
    FwdTileSm90 const tile = fwd_tile_sm90(int(head_dim), int(config));
    return {tile.block_m, tile.block_n};
}

std::tuple<int64_t, int64_t, int64_t, int64_t> sm80_tiles(int64_t head_dim) {
    try {
        TileShapeSm80 const s = tile_shape_sm80(int(head_dim));
        return {s.fwd_block_m, s.fwd_block_n, s.bwd_block_n, s.bwd_block_m};
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, "hmar_kernels sm80 kernels: ", error.what());
    }
}

int64_t sm_count(int64_t device) { return device_info(int(device)).sm_count; }

}  // namespace hmar
