// The sm80 backward's runtime → template switch (dtype, head dim), torch-free.
#include <cutlass/numeric_types.h>

#include "flash_sm80.h"
#include "static_switch.h"

namespace hmar {

void run_bwd_sm80(BwdParamsSm80 const& params, cudaStream_t stream) {
    HMAR_FP16_SWITCH(params.is_bf16, [&] {
        HMAR_HEADDIM_SWITCH(params.head_dim, [&] { run_bwd_sm80_<elem_type, kHeadDim>(params, stream); });
    });
}

}  // namespace hmar
