// The one place where the backward's runtime (dtype, head dim, deterministic) become template arguments.
// Torch-free, like fwd_dispatch.cpp.
#include <cutlass/numeric_types.h>

#include "bwd_tile_size.h"
#include "flash_bwd.h"
#include "static_switch.h"

namespace hmar {

void run_bwd(BwdParams const& params, cudaStream_t stream) {
    HMAR_FP16_SWITCH(params.is_bf16, [&] {
        HMAR_HEADDIM_SWITCH(params.head_dim, [&] {
            if (params.deterministic) {
                run_bwd_sm90<elem_type, kHeadDim, true>(params, stream);
            } else {
                run_bwd_sm90<elem_type, kHeadDim, false>(params, stream);
            }
        });
    });
}

BwdTileShape bwd_tile_shape(int head_dim) {
    BwdTileSm90 const tile = bwd_tile_sm90(head_dim);
    return {tile.block_rows, tile.block_cols};
}

}  // namespace hmar
