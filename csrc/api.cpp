// Python binding of the CUDA kernels. It checks the tensors (messages name them), fills the plain FwdParams and
// calls the dispatcher (fwd_dispatch.cpp). The custom op, fake tensors and the Python autograd path are registered
// in Python (hmar_kernels/ops.py); hmar_kernels/backends/cuda.py calls fwd() below, and so does the C++ autograd path
// (native_attention.cpp).
//
// Only CPU-side torch headers are used (no c10/cuda): the caller passes its current CUDA stream as an integer,
// so this file also compiles against a CPU build of torch (CI).
#include <torch/extension.h>

#include <cuda_runtime_api.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "flash.h"
#include "tile_size.h"
#include "native_attention.h"

namespace {

void check_cuda(cudaError_t status, char const* what) {
    TORCH_CHECK(status == cudaSuccess, "hmar_kernels CUDA forward: ", what, ": ", cudaGetErrorString(status));
}

// TMA reads q, k, v through tensor maps and the epilogue writes out in 16-byte vectors: 16-byte aligned base, unit
// stride on D and every other stride a multiple of 16 bytes (dims of size 1 get a placeholder stride: no index
// ever steps along them).
int64_t tma_stride(at::Tensor const& t, int dim) { return t.size(dim) == 1 ? 8 : t.stride(dim); }

void check_qkv(at::Tensor const& t, char const* name, at::Tensor const& q) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.dim() == 4, name, " must have shape (B, H, L, D), got ", t.sizes());
    TORCH_CHECK(t.sizes() == q.sizes(), name, " has shape ", t.sizes(), " but q has ", q.sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " has dtype ", t.scalar_type(), " but q has ",
                q.scalar_type());
    TORCH_CHECK(t.device() == q.device(), name, " is on ", t.device(), " but q is on ", q.device());
    TORCH_CHECK(t.stride(3) == 1, name, " must have unit stride on D (last dim), got strides ", t.strides());
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned for TMA");
    for (int d = 0; d < 3; ++d) {
        TORCH_CHECK(tma_stride(t, d) % 8 == 0, name, " strides must be multiples of 8 elements (16 bytes) for TMA,"
                    " got ", t.strides(), "; pass a contiguous tensor");
    }
}

void check_int32(at::Tensor const& t, char const* name, at::Tensor const& q) {
    TORCH_CHECK(t.device() == q.device() && t.scalar_type() == at::kInt && t.is_contiguous(), name,
                " must be a contiguous int32 tensor on ", q.device(), " (TileMask metadata), got ", t.scalar_type(),
                " on ", t.device());
}

struct DeviceInfo {
    int major, minor, sm_count;
};

DeviceInfo device_info(int device) {
    static std::vector<DeviceInfo> cache;
    if (device >= int(cache.size())) { cache.resize(device + 1, DeviceInfo{-1, -1, 0}); }
    if (cache[device].major < 0) {
        cudaDeviceProp prop;
        check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        cache[device] = {prop.major, prop.minor, prop.multiProcessorCount};
    }
    return cache[device];
}

// Sets the current device for the scope (the launch goes to q's device) and restores it.
struct DeviceScope {
    int previous = -1;
    explicit DeviceScope(int device) {
        check_cuda(cudaGetDevice(&previous), "cudaGetDevice");
        if (previous != device) { check_cuda(cudaSetDevice(device), "cudaSetDevice"); }
    }
    ~DeviceScope() {
        int current = -1;
        if (cudaGetDevice(&current) == cudaSuccess && current != previous) { cudaSetDevice(previous); }
    }
};

}  // namespace

// q, k, v, out: (B, H, L, D) bf16/fp16; lse: (B, H, L) fp32 contiguous. The metadata tensors (row_lo ... col_end)
// come from hmar_kernels.tiles.tile_mask(..., *fwd_tile(D, config)), programs from launch_order. num_ctas: grid
// size (0: one per SM). counter: 2 zeroed int32 for dynamic scheduling, owned by the caller per stream (the kernel
// leaves them zero), or None for static striding. stream: torch's current stream (cudaStream_t as an integer).
void fwd(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor& out, at::Tensor& lse,
         at::Tensor const& row_lo, at::Tensor const& row_hi, at::Tensor const& row_start,
         at::Tensor const& row_end, at::Tensor const& col_offsets, at::Tensor const& col_num_full,
         at::Tensor const& col_start, at::Tensor const& col_end, at::Tensor const& programs,
         double softmax_scale, int64_t config, int64_t num_ctas, std::optional<at::Tensor> const& counter,
         int64_t stream) {
    TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor, got device ", q.device());
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                "q must be bf16 or fp16 for the CUDA kernels, got ", q.scalar_type());
    check_qkv(q, "q", q);
    check_qkv(k, "k", q);
    check_qkv(v, "v", q);
    check_qkv(out, "out", q);
    int64_t const B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
    TORCH_CHECK(lse.device() == q.device() && lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                    lse.dim() == 3 && lse.size(0) == B && lse.size(1) == H && lse.size(2) == L,
                "lse must be a contiguous fp32 (B, H, L) = (", B, ", ", H, ", ", L, ") tensor on ", q.device(),
                ", got ", lse.scalar_type(), " ", lse.sizes());
    for (auto [t, name] : {std::pair{&row_lo, "row_lo"}, {&row_hi, "row_hi"}, {&row_start, "row_start"},
                           {&row_end, "row_end"}, {&col_offsets, "col_offsets"}, {&col_num_full, "col_num_full"},
                           {&col_start, "col_start"}, {&col_end, "col_end"}, {&programs, "programs"}}) {
        check_int32(*t, name, q);
    }
    if (counter) {
        check_int32(*counter, "counter", q);
        TORCH_CHECK(counter->numel() >= 2, "counter must hold 2 ints, got ", counter->numel());
    }
    TORCH_CHECK(row_lo.numel() == L && row_hi.numel() == L, "row_lo and row_hi must have L = ", L,
                " entries, got ", row_lo.numel(), " and ", row_hi.numel());
    int64_t const T = row_start.numel();
    TORCH_CHECK(row_end.numel() == T && col_num_full.numel() == T && col_offsets.numel() == T + 1,
                "row_start, row_end, col_num_full must have one entry per row tile and col_offsets one more, got ",
                T, ", ", row_end.numel(), ", ", col_num_full.numel(), ", ", col_offsets.numel());
    TORCH_CHECK(col_end.numel() == col_start.numel(), "col_start and col_end must have the same length, got ",
                col_start.numel(), " and ", col_end.numel());
    TORCH_CHECK(programs.dim() == 2 && programs.size(1) == 2, "programs must be (P, 2), got ", programs.sizes());
    TORCH_CHECK(B * H < (int64_t(1) << 31) && L < (int64_t(1) << 31), "B·H and L must fit in int32");

    int const device = q.get_device();
    DeviceInfo const info = device_info(device);
    TORCH_CHECK(info.major == 9 && info.minor == 0, "the CUDA forward needs an sm90 (Hopper) GPU; device ", device,
                " is sm", info.major, info.minor);
    DeviceScope scope(device);

    hmar::FwdParams p{};
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
    p.softmax_scale = float(softmax_scale);
    p.softmax_scale_log2 = float(softmax_scale * 1.4426950408889634);
    p.row_lo = row_lo.data_ptr<int>();
    p.row_hi = row_hi.data_ptr<int>();
    p.row_start = row_start.data_ptr<int>();
    p.row_end = row_end.data_ptr<int>();
    p.col_offsets = col_offsets.data_ptr<int>();
    p.col_num_full = col_num_full.data_ptr<int>();
    p.col_start = col_start.data_ptr<int>();
    p.col_end = col_end.data_ptr<int>();
    p.programs = programs.data_ptr<int>();
    p.num_programs = int(programs.size(0));
    p.num_ctas = int(num_ctas > 0 ? num_ctas : info.sm_count);
    p.scheduler_counter = counter ? counter->data_ptr<int>() : nullptr;
    p.config = int(config);
    try {
        hmar::run_fwd(p, reinterpret_cast<cudaStream_t>(stream));
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, "hmar_kernels CUDA forward: ", error.what());
    }
    check_cuda(cudaGetLastError(), "kernel launch");
}

// (block_m, block_n) of the forward tile: Python builds the TileMask with it.
std::tuple<int, int> fwd_tile(int64_t head_dim, int64_t config) {
    TORCH_CHECK_VALUE(config >= 0 && config < hmar::kNumFwdConfigsSm90, "config must be in [0, ",
                      hmar::kNumFwdConfigsSm90, "), got ", config);
    hmar::FwdTileSm90 const tile = hmar::fwd_tile_sm90(int(head_dim), int(config));
    return {tile.block_m, tile.block_n};
}

// What this build contains: {"dtypes": [...], "head_dims": [...], "configs": n}.
py::dict built() {
    hmar::BuiltKernels const b = hmar::built_kernels();
    py::dict d;
    std::vector<std::string> dtypes{"bf16"};
    if (b.fp16) { dtypes.push_back("fp16"); }
    std::vector<int> head_dims{64};
    if (b.hdim128) { head_dims.push_back(128); }
    d["dtypes"] = dtypes;
    d["head_dims"] = head_dims;
    d["configs"] = b.alt_configs ? hmar::kNumFwdConfigsSm90 : 1;
    return d;
}

int64_t sm_count(int64_t device) { return device_info(int(device)).sm_count; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "hmar_kernels CUDA kernels (csrc/): block-sparse multi-scale attention, sm90a forward";
    m.def("fwd", &fwd, "sm90a block-sparse forward (writes out and lse)", py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("lse"), py::arg("row_lo"), py::arg("row_hi"), py::arg("row_start"),
          py::arg("row_end"), py::arg("col_offsets"), py::arg("col_num_full"), py::arg("col_start"),
          py::arg("col_end"), py::arg("programs"), py::arg("softmax_scale"),
          py::arg("config"), py::arg("num_ctas"), py::arg("counter"), py::arg("stream"));
    m.def("fwd_tile", &fwd_tile, "(block_m, block_n) of the forward tile", py::arg("head_dim"), py::arg("config"));
    m.def("built", &built, "dtypes, head dims and configs compiled into this build");
    m.def("sm_count", &sm_count, "number of SMs of a CUDA device", py::arg("device"));
    m.def("register_plan", &register_plan, "register the kernels of one forward + backward plan; returns its id",
          py::arg("launches"), py::arg("codes"), py::arg("tables"), py::arg("like"), py::arg("poison"),
          py::arg("cuda_forward"));
    m.def("native_attention", &native_attention, "a plan's kernels under a C++ autograd Function", py::arg("q"),
          py::arg("k"), py::arg("v"), py::arg("plan"));
}
