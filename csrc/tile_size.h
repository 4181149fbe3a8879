// Tile shapes of the kernels: one constexpr table, read by the launch templates and (through api.cpp) by Python,
// which builds the TileMask with the same block_m and block_n.
#pragma once

namespace hmar {

struct FwdTileSm90 {
    int block_m;            // Q rows per work tile: 64 per consumer warpgroup (wgmma M = 64); the TileMask cuts
                            // row tiles of at most block_m owned rows along the schedule
    int block_n;            // keys per column (KV) tile (wgmma N of QKᵀ, K of PV)
    int stages;             // depth of the K and V shared-memory rings
    bool intra_wg_overlap;  // softmax of tile n overlaps the PV wgmma of tile n-1 inside a warpgroup
    bool wg_pingpong;       // named barriers make the consumer warpgroups take turns issuing wgmma
    bool wg_epilogue;       // each consumer warpgroup stores its own 64 rows of O (no CTA-wide epilogue barrier)
};

constexpr int kNumFwdConfigsSm90 = 3;

// Shared memory per CTA = 2 bytes · (block_m·D [Q] + 2·stages·block_n·D [K, V] + block_m·D [O]).
// Registers: S (block_n/2 fp32) + O (D/2 fp32) + P (block_n/4) per thread of a consumer warpgroup.
constexpr FwdTileSm90 fwd_tile_sm90(int head_dim, int config) {
    if (head_dim <= 64) {
        // 0: 3 consumer WGs, 192×128, 2 stages (FA3's D=64 shape): each K/V tile serves 192 rows; 160 registers
        //    per thread (no spills since the schedule-aligned epilogue). Tile waste at 1024 px block-diagonal
        //    1.041× the exact work (128×128: 1.019×), yet fastest everywhere. H100, bf16, B=4 H=16, kernel-only,
        //    1024 px: block-diagonal 0.836 ms vs 0.918 for config 1, block-causal 1.888 vs 2.024, dense 2.978 vs
        //    3.192; 512 px: 0.083 vs 0.086 diagonal, 0.150 vs 0.150 causal (bench/cuda_fwd.py, 2026-11-22).
        //    At 160 registers the mask must not hold per-column state (an early bit-array mask spilled 300 bytes).
        // 1: 2 consumer WGs, 128×128, 3 stages: 128 KB smem. S 64 + O 32 + P 32 registers fit in 240. The
        //    default until the tiles were aligned to the schedule (it wasted less on the global grid).
        // 2: config 1 with the CTA-wide epilogue (A/B of the per-warpgroup store: same speed at D = 64).
        return config == 0   ? FwdTileSm90{192, 128, 2, true, true, true}
               : config == 1 ? FwdTileSm90{128, 128, 3, true, true, true}
                             : FwdTileSm90{128, 128, 3, true, true, false};
    }
    // D = 128. 0: 128×128, 2 stages: 192 KB smem (3 stages would need 256 KB). S 64 + O 64 + P 32 registers.
    // 1: the same tile without the warpgroup ping-pong barrier (H100 1024 px: within 4% of config 0 either way).
    // 2: config 0 with the CTA-wide epilogue: 7-8% slower at 1024 px (both warpgroups wait for the slower one).
    // (Measured on the earlier global tile grid with TMA stores of O; on the schedule-aligned tiles config 1 wins
    // 1024 px causal 2.975 vs 3.031 ms kernel-only and loses block-diagonal 1.342 vs 1.354: a tie.)
    return config == 0   ? FwdTileSm90{128, 128, 2, true, true, true}
           : config == 1 ? FwdTileSm90{128, 128, 2, true, false, true}
                         : FwdTileSm90{128, 128, 2, true, true, false};
}

}  // namespace hmar
