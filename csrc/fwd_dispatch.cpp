// The one place where runtime (dtype, head dim, config) become template arguments. Torch-free: C++ users link
// it with the instantiations (CMakeLists.txt); api.cpp calls it for Python.
#include <cutlass/numeric_types.h>

#include "flash.h"
#include "static_switch.h"

namespace hmar {

void run_fwd(FwdParams const& params, cudaStream_t stream) {
    HMAR_FP16_SWITCH(params.is_bf16, [&] {
        HMAR_HEADDIM_SWITCH(params.head_dim, [&] {
            HMAR_CONFIG_SWITCH(params.config, [&] { run_fwd_sm90<elem_type, kHeadDim, kConfig>(params, stream); });
        });
    });
}

BuiltKernels built_kernels() {
    BuiltKernels built{true, true, true};
#ifdef HMAR_NO_FP16
    built.fp16 = false;
#endif
#ifdef HMAR_NO_HDIM128
    built.hdim128 = false;
#endif
#ifdef HMAR_NO_ALT_CONFIGS
    built.alt_configs = false;
#endif
    return built;
}

}  // namespace hmar
