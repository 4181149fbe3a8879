// Tile shapes of the sm90a backward: one constexpr table, read by the launch template and (through
// bwd_tile_shape) by the binding, which builds the TileMasks with the same rows and columns.
#pragma once

namespace hmar {

struct BwdTileSm90 {
    int block_rows;  // rows a CTA owns and accumulates (keys for dK/dV, queries for the dQ pass): 64 per consumer
                     // warpgroup (wgmma M = 64)
    int block_cols;  // columns per step (queries for dK/dV, keys for the dQ pass): the wgmma N of S and dP, the K of
                     // the dK/dV (or dQ) update
    int stages;      // depth of the column operands' shared-memory ring (two tiles per stage)
};

// Registers per consumer thread (2 warpgroups, setmaxnreg 240): dK + dV accumulators D/2 + D/2 fp32, S and dP
// block_cols/2 fp32 each, P and dS block_cols/4 each (16-bit pairs), the dQ chunk 32 fp32 (dQ is computed in
// 64-column chunks). D = 128: 128 + 64 + 32 + 32 ≈ 256 at the peak unless S/dP die first: they do (P and dS are
// converted before the dK/dV wgmma). Shared memory: 2·(2·rows·D [K, V] + 2·stages·cols·D [Q, dO] + rows·cols [dS]):
// D = 64: 80 KB; D = 128: 144 KB.
constexpr BwdTileSm90 bwd_tile_sm90(int head_dim) {
    return head_dim <= 64 ? BwdTileSm90{128, 64, 2} : BwdTileSm90{128, 64, 2};
}

}  // namespace hmar
