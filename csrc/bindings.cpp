// The Python binding of the extension hmar_kernels._C (pybind11 only; the C++ APIs are api.h and
// native_attention.h). Arguments are structs with named fields, so a caller never depends on positions.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "api.h"
#include "bwd_tile_size.h"
#include "flash.h"
#include "native_attention.h"
#include "tile_size.h"

namespace {

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
    std::vector<int> bwd_configs{hmar::kDefaultBwdConfigSm90};
    for (int c = 0; b.alt_configs && c < hmar::kNumBwdConfigsSm90; ++c) {
        if (c != hmar::kDefaultBwdConfigSm90) { bwd_configs.push_back(c); }
    }
    d["bwd_configs"] = bwd_configs;
    return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "hmar_kernels CUDA kernels (csrc/): block-sparse multi-scale attention, sm90a and sm80 forward and "
              "backward";
    using hmar::CudaBackward, hmar::CudaForward, hmar::PlanSpec, hmar::TileTables, hmar::TritonKernelSpec;
    py::class_<TileTables>(m, "TileTables", "tile tables packed into one int32 buffer: offsets and sizes")
        .def(py::init<>())
        .def_readwrite("buffer", &TileTables::buffer)
        .def_readwrite("row_lo", &TileTables::row_lo)
        .def_readwrite("row_hi", &TileTables::row_hi)
        .def_readwrite("row_start", &TileTables::row_start)
        .def_readwrite("row_end", &TileTables::row_end)
        .def_readwrite("col_offsets", &TileTables::col_offsets)
        .def_readwrite("col_num_full", &TileTables::col_num_full)
        .def_readwrite("col_start", &TileTables::col_start)
        .def_readwrite("col_end", &TileTables::col_end)
        .def_readwrite("programs", &TileTables::programs)
        .def_readwrite("length", &TileTables::length)
        .def_readwrite("row_tiles", &TileTables::row_tiles)
        .def_readwrite("visits", &TileTables::visits)
        .def_readwrite("num_programs", &TileTables::num_programs);
    py::class_<CudaForward>(m, "CudaForward", "what a CUDA forward launch reads besides its tensors")
        .def(py::init<>())
        .def_readwrite("tables", &CudaForward::tables)
        .def_readwrite("softmax_scale", &CudaForward::softmax_scale)
        .def_readwrite("config", &CudaForward::config)
        .def_readwrite("num_ctas", &CudaForward::num_ctas)
        .def_readwrite("dynamic", &CudaForward::dynamic)
        .def_readwrite("arch", &CudaForward::arch);
    py::class_<CudaBackward>(m, "CudaBackward", "what a CUDA backward launch reads besides its tensors")
        .def(py::init<>())
        .def_readwrite("kv", &CudaBackward::kv)
        .def_readwrite("q", &CudaBackward::q)
        .def_readwrite("pairs", &CudaBackward::pairs)
        .def_readwrite("softmax_scale", &CudaBackward::softmax_scale)
        .def_readwrite("config", &CudaBackward::config)
        .def_readwrite("arch", &CudaBackward::arch);
    py::class_<TritonKernelSpec>(m, "TritonKernelSpec", "a Triton-compiled kernel: function, launch, codes")
        .def(py::init<>())
        .def_readwrite("function", &TritonKernelSpec::function)
        .def_readwrite("threads", &TritonKernelSpec::threads)
        .def_readwrite("shared_bytes", &TritonKernelSpec::shared_bytes)
        .def_readwrite("grid", &TritonKernelSpec::grid)
        .def_readwrite("codes", &TritonKernelSpec::codes);
    py::class_<PlanSpec>(m, "PlanSpec", "the kernels of one forward + backward plan")
        .def(py::init<>())
        .def_readwrite("triton_forward", &PlanSpec::triton_forward)
        .def_readwrite("cuda_forward", &PlanSpec::cuda_forward)
        .def_readwrite("cuda_backward", &PlanSpec::cuda_backward)
        .def_readwrite("preprocess", &PlanSpec::preprocess)
        .def_readwrite("backward", &PlanSpec::backward)
        .def_readwrite("tables", &PlanSpec::tables)
        .def_readwrite("like", &PlanSpec::like)
        .def_readwrite("poison", &PlanSpec::poison);

    m.def("fwd", &hmar::fwd, "block-sparse forward (writes out and lse)", py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("lse"), py::arg("args"), py::arg("stream"));
    m.def("bwd", &hmar::bwd, "block-sparse backward (writes dq, dk, dv)", py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
          py::arg("args"), py::arg("stream"));
    m.def("bwd_tile", &hmar::bwd_tile, "(rows, cols, deterministic, paired) of an sm90 backward config",
          py::arg("head_dim"), py::arg("config"));
    m.attr("bwd_default_config") = hmar::kDefaultBwdConfigSm90;
    m.def("sm80_tiles", &hmar::sm80_tiles, "(fwd block_m, fwd block_n, bwd rows, bwd cols) of the sm80 kernels",
          py::arg("head_dim"));
    m.def("fwd_tile", &hmar::fwd_tile, "(block_m, block_n) of the forward tile", py::arg("head_dim"),
          py::arg("config"));
    m.def("built", &built, "dtypes, head dims and configs compiled into this build");
    m.def("sm_count", &hmar::sm_count, "number of SMs of a CUDA device", py::arg("device"));
    m.def("register_plan", &hmar::register_plan, "register the kernels of one forward + backward plan; its id",
          py::arg("spec"));
    m.def("native_attention", &hmar::native_attention, "a plan's kernels under a C++ autograd Function",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("plan"));
}
