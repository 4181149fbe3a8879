// The kernel backends' forward + backward as one C++ autograd Function: the kernels Triton compiled, launched from
// C++ (triton_launch.h), and for backends "cuda" / "cuda_sm80" the CUDA forward and backward of api.h, so that no
// Python runs in the autograd engine's device thread. Python builds a plan per (backend, schedule, pattern, shape, dtype, device,
// options) once (hmar_kernels/backends/native.py) and registers it here; a call then costs a few tensor allocations,
// tensor-map encodings and launches.
//
// CPU-side torch headers only (CI syntax-checks this file against a CPU torch): the current stream comes from
// c10's device-generic stream API.
#include "native_attention.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/extension.h>

#include <deque>
#include <limits>
#include <mutex>

#include "api_common.h"
#include "triton_launch.h"

namespace hmar {
namespace {

// The kernels of one (backend, schedule, pattern, shape, dtype, device, options) and what they read.
struct Plan {
    TritonKernel forward, preprocess, backward;  // forward unused when cuda_forward is set, the other two when
                                                 // cuda_backward is
    std::optional<CudaForward> cuda_forward;
    std::optional<CudaBackward> cuda_backward;
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

TritonKernel make_kernel(TritonKernelSpec const& spec, char const* name) {
    TORCH_CHECK_VALUE(spec.grid.size() == 3, name, ": grid must be (x, y, z), got ", spec.grid.size(), " values");
    TritonKernel kernel;
    kernel.function = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(spec.function));
    kernel.threads = unsigned(spec.threads);
    kernel.shared_bytes = unsigned(spec.shared_bytes);
    for (int i = 0; i < 3; ++i) { kernel.grid[i] = unsigned(spec.grid[i]); }
    try {
        for (auto const& code : spec.codes) { kernel.params.push_back(ParamCode::parse(code)); }
    } catch (std::invalid_argument const& error) {
        TORCH_CHECK_VALUE(false, name, ": ", error.what());
    }
    std::string const mismatch = check_params(kernel);
    TORCH_CHECK_VALUE(mismatch.empty(), name, ": the parameter codes do not match the compiled kernel: ", mismatch);
    return kernel;
}

// t itself where TMA can read it (api_common.h, tensor_rules.h), else a contiguous copy.
at::Tensor tma_ready(at::Tensor const& t) { return detail::tma_readable(t) ? t : t.contiguous(); }

at::Tensor new_output(at::IntArrayRef shape, at::ScalarType dtype, Plan const& plan) {
    auto const options = at::TensorOptions().dtype(dtype).device(plan.device);
    return plan.poison ? at::full(shape, std::numeric_limits<double>::quiet_NaN(), options)
                       : at::empty(shape, options);
}

TensorRef ref(at::Tensor const& t) {
    TensorRef r;
    r.data = t.data_ptr();
    r.rank = int(t.dim());
    for (int d = 0; d < r.rank; ++d) { r.sizes[d] = t.size(d), r.strides[d] = t.stride(d); }
    r.element_size = int(t.element_size());
    return r;
}

CUstream current_stream(c10::Device device) {
    return static_cast<CUstream>(c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle());
}

void launch_checked(TritonKernel const& kernel, TensorRef const* slots, c10::Device device, char const* name) {
    std::string const error = launch(kernel, device.index(), current_stream(device), slots);
    TORCH_CHECK(error.empty(), "hmar_kernels: Triton ", name, " kernel launch: ", error);
}

void run_forward(Plan const& plan, TensorRef const* slots, at::Tensor const& q, at::Tensor const& k,
                 at::Tensor const& v, at::Tensor& out, at::Tensor& lse) {
    if (!plan.cuda_forward) {
        launch_checked(plan.forward, slots, plan.device, "forward");
        return;
    }
    fwd(q, k, v, out, lse, *plan.cuda_forward, int64_t(reinterpret_cast<uintptr_t>(current_stream(plan.device))));
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
        TensorRef slots[kNumSlots];
        slots[kQ] = ref(q), slots[kK] = ref(k), slots[kV] = ref(v);
        slots[kOut] = ref(out), slots[kLse] = ref(lse);
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
        // The delta preprocess reads dout with out's (contiguous) strides, fixed in the plan; the CUDA backward
        // reads it through TMA.
        at::Tensor const dout = grads[0].contiguous();
        int64_t const B = plan.shape[0], H = plan.shape[1], L = plan.shape[2], D = plan.shape[3];
        at::Tensor dq = new_output({B, H, L, D}, plan.dtype, plan);
        at::Tensor dk = new_output({B, H, L, D}, plan.dtype, plan);
        at::Tensor dv = new_output({B, H, L, D}, plan.dtype, plan);
        if (plan.cuda_backward) {
            bwd(q, k, v, out, dout, lse, dq, dk, dv, *plan.cuda_backward,
                int64_t(reinterpret_cast<uintptr_t>(current_stream(plan.device))));
            return {dq, dk, dv, at::Tensor()};
        }
        at::Tensor delta = new_output({B, H, L}, at::kFloat, plan);
        TensorRef slots[kNumSlots];
        slots[kQ] = ref(q), slots[kK] = ref(k), slots[kV] = ref(v);
        slots[kOut] = ref(out), slots[kLse] = ref(lse), slots[kDout] = ref(dout);
        slots[kDelta] = ref(delta), slots[kDq] = ref(dq), slots[kDk] = ref(dk);
        slots[kDv] = ref(dv);
        launch_checked(plan.preprocess, slots, plan.device, "backward preprocess");
        launch_checked(plan.backward, slots, plan.device, "backward");
        return {dq, dk, dv, at::Tensor()};
    }
};

}  // namespace

int64_t register_plan(PlanSpec const& spec) {
    TORCH_CHECK_VALUE(spec.triton_forward.has_value() != spec.cuda_forward.has_value(),
                      "a plan has exactly one forward: triton_forward or cuda_forward");
    at::Tensor const& like = spec.like;
    TORCH_CHECK_VALUE(like.defined() && like.is_cuda() && like.dim() == 4, "like must be a (B, H, L, D) CUDA tensor");
    c10::DeviceGuard guard(like.device());
    Plan plan{{}, {}, {}, spec.cuda_forward, spec.cuda_backward, spec.tables, like.sizes().vec(), like.scalar_type(),
              like.device(), spec.poison};
    if (!spec.cuda_backward) {
        plan.preprocess = make_kernel(spec.preprocess, "backward preprocess");
        plan.backward = make_kernel(spec.backward, "backward");
    }
    if (!spec.cuda_forward) { plan.forward = make_kernel(*spec.triton_forward, "forward"); }
    std::lock_guard<std::mutex> lock(plans_mutex);
    plans.push_back(std::move(plan));
    return int64_t(plans.size()) - 1;
}

at::Tensor native_attention(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, int64_t plan_id) {
    return NativeAttention::apply(q, k, v, plan_id);
}

}  // namespace hmar
