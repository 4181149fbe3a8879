// The mask policy: which KV tiles a Q tile visits, how many of them need the element mask, and the element mask.
//
// Everything comes from the TileMask metadata (hmar_kernels/schedule.py), so block-diagonal, block-causal and any
// S×S scale pattern run the same code. Key k is visible to query q iff bit level[k] of row_bits[level[q]] is set;
// positions past L get level 31, which no row allows (row_bits fit in 31 bits).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "utils.h"

namespace hmar {

struct BlockSparseMaskParams {
    int const* level;
    int const* row_bits;
    int const* kv_offsets;
    int const* kv_num_full;
    int const* kv_indices;
    int seqlen;
};

struct KvTileRange {
    int first;     // index into kv_indices of the first tile
    int num_full;  // tiles [first, first + num_full) need no element mask
    int count;     // tiles [first, first + count) are visited
};

CUTLASS_DEVICE KvTileRange kv_tile_range(BlockSparseMaskParams const& p, int m_block) {
    int const first = p.kv_offsets[m_block];
    return {first, p.kv_num_full[m_block], p.kv_offsets[m_block + 1] - first};
}

// Per-thread element mask over the fp32 accumulator of one warpgroup's share of a (kBlockM, kBlockN) S tile.
template <int kBlockM, int kBlockN, class TiledMmaQK>
struct BlockSparseMask {
    static constexpr int kOutOfRangeLevel = 31;
    using CoordTensor = decltype(TiledMmaQK{}.get_thread_slice(0).partition_C(
        make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    static constexpr int kRows = decltype(size<0>(acc_rowcol(CoordTensor{}.layout())))::value;

    BlockSparseMaskParams const& p;
    CoordTensor tScS;  // (row, col) inside the tile of each accumulator value of this thread
    uint32_t q_bits[kRows];

    CUTLASS_DEVICE BlockSparseMask(BlockSparseMaskParams const& params, int thread_idx)
        : p(params),
          tScS(TiledMmaQK{}.get_thread_slice(thread_idx).partition_C(
              make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}))) {}

    // Row bits of this thread's rows of Q tile m_block (0 past L: nothing visible).
    CUTLASS_DEVICE void load_rows(int m_block) {
        Tensor rowcol = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
            int const row = m_block * kBlockM + get<0>(rowcol(r, 0));
            q_bits[r] = row < p.seqlen ? uint32_t(__ldg(p.row_bits + __ldg(p.level + row))) : 0u;
        }
    }

    // before_softmax hook of a partial tile: scores of invisible (query, key) pairs become -inf.
    // Each thread holds 2 rows × (kBlockN / 4) columns, in adjacent pairs: one 8-byte load of two levels per pair
    // (tiles inside [0, L)), one bit per column, then one AND and one select per score.
    template <class TensorS>
    CUTLASS_DEVICE void before_softmax(TensorS& s_rowcol, int n_block) const {
        Tensor rowcol = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
        constexpr int kCols = decltype(size<1>(s_rowcol))::value;
        static_assert(kCols % 2 == 0);
        int const col0 = n_block * kBlockN;
        auto apply = [&](int c, uint32_t col_bit) {
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < kRows; ++r) {
                if (!(q_bits[r] & col_bit)) { s_rowcol(r, c) = -INFINITY; }
            }
        };
        if (col0 + kBlockN <= p.seqlen) {
            CUTLASS_PRAGMA_UNROLL
            for (int c = 0; c < kCols; c += 2) {
                // columns c, c + 1 of the view are adjacent keys (accumulator value v0 = 0, 1), the first even
                int2 const levels = __ldg(reinterpret_cast<int2 const*>(p.level + col0 + get<1>(rowcol(0, c))));
                apply(c, 1u << levels.x);
                apply(c + 1, 1u << levels.y);
            }
        } else {  // the last KV tile: keys past L get level 31, which no row allows
            CUTLASS_PRAGMA_UNROLL
            for (int c = 0; c < kCols; ++c) {
                int const col = col0 + get<1>(rowcol(0, c));
                apply(c, 1u << (col < p.seqlen ? __ldg(p.level + col) : kOutOfRangeLevel));
            }
        }
    }
};

}  // namespace hmar
