// The kernel backends' forward + backward as one C++ autograd Function: the kernels Triton compiled, launched from
// C++ (triton_launch.h), and for backend "cuda" the sm90 forward of api.cpp, so that no Python runs in the
// autograd engine's device thread. Python builds a plan per (backend, schedule, pattern, shape, dtype, device,
// options) once (hmar_kernels/backends/native.py) and registers it here; a call then costs a few tensor allocations,
// tensor-map encodings and launches.
//
// CPU-side torch headers only (CI syntax-checks this file against a CPU torch): the current stream comes from
// c10's device-generic stream API.
#include "native_attention.h"

#include <c10/core/DeviceGuard.h>
#include <cuda_runtime_api.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/extension.h>

#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>

#include "triton_launch.h"

namespace {

// The CUDA forward of a plan (CudaForwardSpec), with the dynamic scheduler's counters: two zeroed int32 per
// stream, so that concurrent launches never share one (the kernel leaves them zero).
struct CudaForward {
    std::vector<at::Tensor> tables;
    double softmax_scale;
    int64_t config, num_ctas;
    bool dynamic;
    std::map<CUstream, at::Tensor> counters;  // guarded by plans_mutex
};

// The kernels of one (backend, schedule, pattern, shape, dtype, device, options) and what they read.
struct Plan {
    hmar::TritonKernel forward, preprocess, backward;  // forward unused when cuda_forward is set
    std::shared_ptr<CudaForward> cuda_forward;
    std::vector<at::Tensor> tables;  // the schedule tables whose addresses the codes hold: kept alive here
    std::vector<int64_t> shape;      // (B, H, L, D) of q, k, v
    at::ScalarType dtype;
    c10::Device device;
    bool poison;  // fill outputs with NaN before the kernels write them (tests)
};

std::mutex plans_mutex;
std::deque<Plan> plans;  // never erased: ids stay valid; a deque keeps references stable on push_back

Plan const& plan_of(int64_t id) {
    std::lock_guard<std::mutex> lock(plans_mutex);
    TORCH_CHECK_VALUE(id >= 0 && id < int64_t(plans.size()), "unknown plan id ", id);
    return plans[size_t(id)];
}

hmar::TritonKernel make_kernel(std::vector<int64_t> const& launch, std::vector<std::vector<int64_t>> const& codes,
                               char const* name) {
    TORCH_CHECK_VALUE(launch.size() == 6, name, ": launch must be (function, threads, shared bytes, grid x, y, z)");
    hmar::TritonKernel kernel;
    kernel.function = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(launch[0]));
    kernel.threads = unsigned(launch[1]);
    kernel.shared_bytes = unsigned(launch[2]);
    for (int i = 0; i < 3; ++i) { kernel.grid[i] = unsigned(launch[3 + i]); }
    try {
        for (auto const& code : codes) { kernel.params.push_back(hmar::ParamCode::parse(code)); }
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, name, ": ", error.what());
    }
    std::string const mismatch = hmar::check_params(kernel);
    TORCH_CHECK_VALUE(mismatch.empty(), name, ": the parameter codes do not match the compiled kernel: ", mismatch);
    return kernel;
}

// Whether TMA can read t as it is (unit last stride, 16-byte aligned base and strides of dims > 1): the same rule
// as hmar_kernels.buffers.tma_ready.
bool tma_readable(at::Tensor const& t) {
    int64_t const size = t.element_size();
    if (t.stride(-1) != 1 || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) { return false; }
    for (int64_t d = 0; d + 1 < t.dim(); ++d) {
        if (t.size(d) > 1 && (t.stride(d) * size) % 16 != 0) { return false; }
    }
    return true;
}

at::Tensor tma_ready(at::Tensor const& t) { return tma_readable(t) ? t : t.contiguous(); }

at::Tensor new_output(at::IntArrayRef shape, at::ScalarType dtype, Plan const& plan) {
    auto const options = at::TensorOptions().dtype(dtype).device(plan.device);
    return plan.poison ? at::full(shape, std::numeric_limits<double>::quiet_NaN(), options)
                       : at::empty(shape, options);
}

hmar::TensorRef ref(at::Tensor const& t) {
    hmar::TensorRef r;
    r.data = t.data_ptr();
    r.rank = int(t.dim());
    for (int d = 0; d < r.rank; ++d) { r.sizes[d] = t.size(d), r.strides[d] = t.stride(d); }
    r.element_size = int(t.element_size());
    return r;
}

CUstream current_stream(c10::Device device) {
    return static_cast<CUstream>(c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle());
}

void launch(hmar::TritonKernel const& kernel, hmar::TensorRef const* slots, c10::Device device, char const* name) {
    std::string const error = hmar::launch(kernel, device.index(), current_stream(device), slots);
    TORCH_CHECK(error.empty(), "hmar_kernels: Triton ", name, " kernel launch: ", error);
}

// The dynamic scheduler's counter for stream, or none while a capture is under way and none exists yet (the
// capture then strides statically rather than allocating inside the graph), as hmar_kernels/backends/cuda.py does.
std::optional<at::Tensor> scheduler_counter(CudaForward& f, CUstream stream, c10::Device device) {
    if (!f.dynamic) { return std::nullopt; }
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto found = f.counters.find(stream);
    if (found != f.counters.end()) { return found->second; }
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    TORCH_CHECK(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &capture) == cudaSuccess,
                "cudaStreamIsCapturing failed");
    if (capture != cudaStreamCaptureStatusNone) { return std::nullopt; }
    return f.counters[stream] = at::zeros({2}, at::TensorOptions().dtype(at::kInt).device(device));
}

void run_forward(Plan const& plan, hmar::TensorRef const* slots, at::Tensor const& q, at::Tensor const& k,
                 at::Tensor const& v, at::Tensor& out, at::Tensor& lse) {
    if (!plan.cuda_forward) {
        launch(plan.forward, slots, plan.device, "forward");
        return;
    }
    CudaForward& f = *plan.cuda_forward;
    CUstream const stream = current_stream(plan.device);
    auto const& t = f.tables;
    fwd(q, k, v, out, lse, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], f.softmax_scale, f.config,
        f.num_ctas, scheduler_counter(f, stream, plan.device), int64_t(reinterpret_cast<uintptr_t>(stream)));
}

void check_input(at::Tensor const& t, char const* name, Plan const& plan) {
    TORCH_CHECK_VALUE(t.device() == plan.device && t.scalar_type() == plan.dtype && t.sizes() == plan.shape, name,
                      " does not match the plan: ", t.sizes(), " ", t.scalar_type(), " on ", t.device(),
                      ", plan for ", at::IntArrayRef(plan.shape), " ", plan.dtype, " on ", plan.device);
}

class NativeAttention : public torch::autograd::Function<NativeAttention> {
   public:
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor const& q_in, at::Tensor const& k_in,
                              at::Tensor const& v_in, int64_t plan_id) {
        Plan const& plan = plan_of(plan_id);
        check_input(q_in, "q", plan), check_input(k_in, "k", plan), check_input(v_in, "v", plan);
        c10::DeviceGuard guard(plan.device);
        at::Tensor const q = tma_ready(q_in), k = tma_ready(k_in), v = tma_ready(v_in);
        int64_t const B = plan.shape[0], H = plan.shape[1], L = plan.shape[2], D = plan.shape[3];
        at::Tensor out = new_output({B, H, L, D}, plan.dtype, plan);
        at::Tensor lse = new_output({B, H, L}, at::kFloat, plan);
        hmar::TensorRef slots[hmar::kNumSlots];
        slots[hmar::kQ] = ref(q), slots[hmar::kK] = ref(k), slots[hmar::kV] = ref(v);
        slots[hmar::kOut] = ref(out), slots[hmar::kLse] = ref(lse);
        run_forward(plan, slots, q, k, v, out, lse);
        ctx->save_for_backward({q, k, v, out, lse});
        ctx->saved_data["plan"] = plan_id;
        return out;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        Plan const& plan = plan_of(ctx->saved_data["plan"].toInt());
        auto const saved = ctx->get_saved_variables();
        at::Tensor const &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
        c10::DeviceGuard guard(plan.device);
        // The delta preprocess reads dout with out's (contiguous) strides, fixed in the plan.
        at::Tensor const dout = grads[0].contiguous();
        int64_t const B = plan.shape[0], H = plan.shape[1], L = plan.shape[2], D = plan.shape[3];
        at::Tensor delta = new_output({B, H, L}, at::kFloat, plan);
        at::Tensor dq = new_output({B, H, L, D}, plan.dtype, plan);
        at::Tensor dk = new_output({B, H, L, D}, plan.dtype, plan);
        at::Tensor dv = new_output({B, H, L, D}, plan.dtype, plan);
        hmar::TensorRef slots[hmar::kNumSlots];
        slots[hmar::kQ] = ref(q), slots[hmar::kK] = ref(k), slots[hmar::kV] = ref(v);
        slots[hmar::kOut] = ref(out), slots[hmar::kLse] = ref(lse), slots[hmar::kDout] = ref(dout);
        slots[hmar::kDelta] = ref(delta), slots[hmar::kDq] = ref(dq), slots[hmar::kDk] = ref(dk);
        slots[hmar::kDv] = ref(dv);
        launch(plan.preprocess, slots, plan.device, "backward preprocess");
        launch(plan.backward, slots, plan.device, "backward");
        return {dq, dk, dv, at::Tensor()};
    }
};

}  // namespace

int64_t register_plan(std::vector<std::vector<int64_t>> const& launches,
                      std::vector<std::vector<std::vector<int64_t>>> const& codes,
                      std::vector<at::Tensor> const& tables, at::Tensor const& like, bool poison,
                      std::optional<CudaForwardSpec> const& cuda_forward) {
    TORCH_CHECK_VALUE(launches.size() == 3 && codes.size() == 3,
                      "a plan has 3 kernels (forward, backward preprocess, backward)");
    TORCH_CHECK_VALUE(like.is_cuda() && like.dim() == 4, "like must be a (B, H, L, D) CUDA tensor");
    c10::DeviceGuard guard(like.device());
    Plan plan{{}, make_kernel(launches[1], codes[1], "backward preprocess"),
              make_kernel(launches[2], codes[2], "backward"), nullptr, tables, like.sizes().vec(),
              like.scalar_type(), like.device(), poison};
    if (cuda_forward) {
        auto const& [fwd_tables, scale, config, num_ctas, dynamic] = *cuda_forward;
        TORCH_CHECK_VALUE(fwd_tables.size() == 9, "the CUDA forward reads 9 tables, got ", fwd_tables.size());
        TORCH_CHECK_VALUE(launches[0].empty() && codes[0].empty(), "a plan with a CUDA forward has no Triton one");
        plan.cuda_forward = std::make_shared<CudaForward>(CudaForward{fwd_tables, scale, config, num_ctas, dynamic,
                                                                      {}});
    } else {
        plan.forward = make_kernel(launches[0], codes[0], "forward");
    }
    std::lock_guard<std::mutex> lock(plans_mutex);
    plans.push_back(std::move(plan));
    return int64_t(plans.size()) - 1;
}

at::Tensor native_attention(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, int64_t plan_id) {
    return NativeAttention::apply(q, k, v, plan_id);
}
