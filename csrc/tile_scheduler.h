// Persistent tile scheduler: the grid's CTAs walk the program table of hmar_kernels.schedule.launch_order
// (heaviest work tiles first) with stride gridDim.x. Sorted round-robin keeps the CTAs' total work within about
// one tile of each other; tiles of equal cost stay grouped by batch·head so CTAs running together share K/V in L2.
// With gridDim.x = num_programs it degenerates to one CTA per program, in the same order.
#pragma once

#include <cutlass/cutlass.h>

namespace hmar {

struct PersistentTileScheduler {
    struct Params {
        int const* programs;  // (num_programs, 2): (kind << 24 | q_tile, batch·head)
        int num_programs;
        int heads;
    };

    struct WorkTile {
        int m_block;
        int bidh;
        int bidb;
    };

    CUTLASS_DEVICE static int first() { return blockIdx.x; }
    CUTLASS_DEVICE static int next(int w) { return w + gridDim.x; }
    CUTLASS_DEVICE static bool valid(Params const& p, int w) { return w < p.num_programs; }

    CUTLASS_DEVICE static WorkTile get(Params const& p, int w) {
        int const tile = __ldg(p.programs + 2 * w) & 0xffffff;
        int const bh = __ldg(p.programs + 2 * w + 1);
        return {tile, bh % p.heads, bh / p.heads};
    }
};

}  // namespace hmar
