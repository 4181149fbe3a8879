// Tile shapes and dQ strategies of the sm90a backward: one constexpr table, read by the launch template and
// (through bwd_tile_shape) by the binding, which builds the TileMasks with the same rows and columns.
#pragma once

namespace hmar {

// How dQ is produced.
enum class BwdDQMode {
    AtomicPerWarpgroup,  // each consumer warpgroup: dQ over its own 64 keys, fp32 atomics (2 adds per (key-tile
                         // row pair, query, dim): one float per visited (key, query) pair at D = 64)
    AtomicSplit,         // both warpgroups' dS in shared memory, each warpgroup dQ over all 128 keys for half of
                         // the head dims: half the atomics, one CTA-wide barrier more per column tile
    BulkSplit,           // AtomicSplit's dQ, added by one TMA bulk reduce-add (64 rows × D/2 fp32) per warpgroup
                         // and column tile instead of per-thread atomics
    SeparatePass,        // no atomics: a dQ pass over query tiles recomputes S and dP (7 GEMMs instead of 5);
                         // deterministic
};

struct BwdTileSm90 {
    int block_rows;  // rows a CTA owns and accumulates (keys for dK/dV, queries for the dQ pass): 64 per consumer
                     // warpgroup (wgmma M = 64)
    int block_cols;  // columns per step (queries for dK/dV, keys for the dQ pass): the wgmma N of S and dP, the K of
                     // the dK/dV (or dQ) update
    int stages;        // depth of the column operands' shared-memory ring (two tiles per stage)
    BwdDQMode dq_mode;
    bool overlap_acc;  // a column tile's dK/dV (or dQ) wgmma stays in flight until the next tile's S is ready (its
                       // stage is released one tile later, hence 3 stages); not with the per-warpgroup atomic dQ
    bool paired;       // SeparatePass: the dK/dV and dQ programs in one launch, one heaviest-first table (no tail
                       // of the first kernel, one launch fewer)
};

constexpr int kNumBwdConfigsSm90 = 7;
constexpr int kDefaultBwdConfigSm90 = 4;  // the one dev builds keep (HMAR_NO_ALT_CONFIGS): deterministic, overlap

// Registers per consumer thread (2 warpgroups, setmaxnreg 240): dK + dV accumulators D/2 + D/2 fp32, S and dP
// block_cols/2 fp32 each, P and dS block_cols/4 each (16-bit pairs), the dQ accumulator 32 fp32 (per warpgroup:
// 64 columns at a time; split: D/4). BulkSplit adds block_cols·D fp32 of shared memory (16 / 32 KB). ptxas: no spills except config 1 at D = 128 (36 bytes: a few loop-invariant
// values reloaded per column tile). Shared memory: 2 bytes · (2·rows·D [K, V] + 2·stages·cols·D [Q, dO] +
// rows·cols [dS]): D = 64: 80 KB; D = 128: 144 KB. One CTA per SM (384 threads' registers).
// Configs 2, 4 and 6 are deterministic (bit-identical results run to run). H200, 1024 px, bf16, D = 64, B = 4, H = 16
// (first run, 1aab962): backward 4.98 ms with config 0's atomics vs 3.45 with config 2's separate dQ pass
// (block-diagonal; block-causal 10.90 vs 7.54): per-thread atomics contend in L2. Shared memory with 3 stages:
// D = 64: 96 KB; D = 128: 176 KB (+32 KB with BulkSplit).
constexpr BwdTileSm90 bwd_tile_sm90(int head_dim, int config) {
    (void)head_dim;
    return config == 0   ? BwdTileSm90{128, 64, 2, BwdDQMode::AtomicPerWarpgroup, false, false}
           : config == 1 ? BwdTileSm90{128, 64, 2, BwdDQMode::AtomicSplit, false, false}
           : config == 2 ? BwdTileSm90{128, 64, 2, BwdDQMode::SeparatePass, false, false}
           : config == 3 ? BwdTileSm90{128, 64, 2, BwdDQMode::BulkSplit, false, false}
           : config == 4 ? BwdTileSm90{128, 64, 3, BwdDQMode::SeparatePass, true, false}
           : config == 5 ? BwdTileSm90{128, 64, 3, BwdDQMode::BulkSplit, true, false}
                         : BwdTileSm90{128, 64, 3, BwdDQMode::SeparatePass, true, true};
}

}  // namespace hmar
