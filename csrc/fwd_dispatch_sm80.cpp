// The sm80 forward's runtime → template switch (dtype, head dim), torch-free; and the tile shapes the TileMasks
// must be built with (Python reads them through the binding).
#include <cutlass/numeric_types.h>

#include "flash_sm80.h"
#include "static_switch.h"
#include "tile_size_sm80.h"

namespace hmar {

void run_fwd_sm80(FwdParams const& params, cudaStream_t stream) {
    HMAR_FP16_SWITCH(params.is_bf16, [&] {
        HMAR_HEADDIM_SWITCH(params.head_dim, [&] { run_fwd_sm80_<elem_type, kHeadDim>(params, stream); });
    });
}

TileShapeSm80 tile_shape_sm80(int head_dim) {
    if (head_dim != 64 && head_dim != 128) { HMAR_NOT_BUILT("head dim", head_dim); }
    FwdTileSm80 const fwd = fwd_tile_sm80(head_dim);
    BwdTileSm80 const bwd = bwd_tile_sm80(head_dim);
    return {fwd.block_m, fwd.block_n, bwd.block_n, bwd.block_m};
}

}  // namespace hmar
