// Tile shapes of the sm80 kernels (mma.sync, FlashAttention-2 style): one constexpr table, read by the launch
// templates and, through the binding, by Python, which builds the TileMasks with the same sizes.
#pragma once

namespace hmar {

struct FwdTileSm80 {
    int block_m;  // Q rows per CTA (one CTA per row tile of the TileMask); 16 rows per warp and repeat
    int block_n;  // keys per column tile
    int warps;    // warps per CTA, all along M
};

// Shared memory = 2 bytes · D · (block_m [Q, reused for O] + 2 stages · 2 · block_n [K, V]).
// Registers per thread: S block_m·block_n / (32·warps) + O block_m·D / (32·warps) fp32.
constexpr FwdTileSm80 fwd_tile_sm80(int head_dim) {
    // D = 64: 128×128, 8 warps (S 64 + O 32 fp32 per thread; ptxas: 248 registers, no spills), 80 KB. With 4 warps
    // (FlashAttention-2's D = 64 shape, S 128 + O 64) ptxas spilled 752 bytes; 128×64 with 4 warps used 254.
    // D = 128: 128×64, 8 warps (S 32 + O 64; 186 registers), 96 KB.
    return head_dim <= 64 ? FwdTileSm80{128, 128, 8} : FwdTileSm80{128, 64, 8};
}

struct BwdTileSm80 {
    int block_n;  // keys per CTA (one CTA per row tile of the transposed pattern's TileMask)
    int block_m;  // queries per step (the column tiles of that TileMask)
    int warps;    // warps per CTA: all along the keys for S, dP, dK, dV; (warps / 2) × 2 for dQ
};

// One CTA owns a key tile: dK, dV in registers (2 · block_n · D / (32·warps) fp32), per step S and dP
// (block_n · block_m / (32·warps) each) and the dQ partial (block_m · D / (32·warps)), added to a fp32 dQ
// accumulator with atomics. Shared memory = 2 bytes · (2 · block_n · D [K, V] + 2 stages · 2 · block_m · D [Q, dO]
// + block_n · block_m [dS]): D = 64: 80 KB, D = 128: 144 KB.
constexpr BwdTileSm80 bwd_tile_sm80(int head_dim) {
    (void)head_dim;
    return BwdTileSm80{128, 64, 8};
}

}  // namespace hmar
