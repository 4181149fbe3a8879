// Persistent tile scheduler over the program table of hmar_kernels.schedule.launch_order (heaviest work tiles
// first; tiles of equal cost grouped by batch·head so that CTAs running together share K/V in L2).
//
// Dynamic mode (counter != nullptr): each CTA starts at program blockIdx.x and then takes the next unclaimed
// program from a global counter, so the programs in flight are always a window of about gridDim.x consecutive
// table rows: K/V of the few heads in that window stay in L2. (Static striding, counter == nullptr, lets CTAs
// drift apart; measured on the H100 at 1024 px block-causal: 3.24 ms static vs 2.21 ms for one CTA per program.)
// The last CTA to finish resets the counter, so back-to-back launches on one stream reuse it with no memset.
//
// The producer warp claims the next program one tile ahead and publishes it to the consumers through shared
// memory and a named barrier (see FlashAttnFwdSm90); grid = num_programs gives one CTA per program.
#pragma once

#include <cutlass/cutlass.h>

namespace hmar {

struct PersistentTileScheduler {
    struct Params {
        int const* programs;  // (num_programs, 2): (kind << 24 | row tile, batch·head)
        int num_programs;
        int heads;
        int* counter;  // 2 ints, zero before the launch (and reset by it); nullptr: static striding
    };

    struct WorkTile {
        int tile;  // row tile of the TileMask
        int bidh;
        int bidb;
    };

    CUTLASS_DEVICE static bool valid(Params const& p, int w) { return w < p.num_programs; }

    CUTLASS_DEVICE static WorkTile get(Params const& p, int w) {
        int const tile = __ldg(p.programs + 2 * w) & 0xffffff;
        int const bh = __ldg(p.programs + 2 * w + 1);
        return {tile, bh % p.heads, bh / p.heads};
    }

    // Producer thread only: claim the program after `current`.
    CUTLASS_DEVICE static int claim_next(Params const& p, int current) {
        if (p.counter == nullptr) { return current + int(gridDim.x); }
        return int(gridDim.x) + atomicAdd(p.counter, 1);
    }

    // Producer thread only, once, after its last claim (which returned an invalid program).
    CUTLASS_DEVICE static void finish(Params const& p) {
        if (p.counter == nullptr) { return; }
        if (atomicAdd(p.counter + 1, 1) == int(gridDim.x) - 1) {  // every CTA has made its last claim
            p.counter[0] = 0;
            p.counter[1] = 0;
        }
    }
};

}  // namespace hmar
