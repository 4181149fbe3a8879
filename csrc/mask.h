// The mask policy: which rows a work tile computes and owns, which column (KV) tiles it visits, how many of them
// need the element mask, and the element mask.
//
// Everything comes from the TileMask metadata (hmar_kernels/schedule.py), so block-diagonal, block-causal and any
// S×S scale pattern run the same code. Tiles follow the schedule instead of a global grid: row tile t computes
// kBlockM rows from row_start[t] and owns [row_start[t], row_end[t]); column tile e holds kBlockN keys from
// col_start[e]. In a partial tile key c is visible to row r iff row_lo[r] <= c < min(row_hi[r], col_end[e]);
// in a full tile every key is visible to every owned row (rows past row_end are computed and dropped).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "utils.h"

namespace hmar {

struct TileMaskParams {
    int const* row_lo;
    int const* row_hi;
    int const* row_start;
    int const* row_end;
    int const* col_offsets;
    int const* col_num_full;
    int const* col_start;
    int const* col_end;
    int seqlen;
};

struct RowTile {
    int row_start;  // first row computed (kBlockM rows from here)
    int row_end;    // rows [row_start, row_end) are written
    int first;      // entries [first, first + count) of col_start / col_end are visited
    int num_full;   // entries [first, first + num_full) need no element mask
    int count;
};

CUTLASS_DEVICE RowTile row_tile(TileMaskParams const& p, int t) {
    int const first = __ldg(p.col_offsets + t);
    return {__ldg(p.row_start + t), __ldg(p.row_end + t), first, __ldg(p.col_num_full + t),
            __ldg(p.col_offsets + t + 1) - first};
}

// Key range of one visited column tile: keys [start, start + kBlockN); in a partial tile keys at or past end are
// invisible to every row.
struct ColTile {
    int start;
    int end;
};

// Per-thread element mask over the fp32 accumulator of one warpgroup's share of a (kBlockM, kBlockN) S tile.
template <int kBlockM, int kBlockN, class TiledMmaQK>
struct BlockSparseMask {
    using CoordTensor = decltype(TiledMmaQK{}.get_thread_slice(0).partition_C(
        make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    static constexpr int kRows = decltype(size<0>(acc_rowcol(CoordTensor{}.layout())))::value;

    TileMaskParams const& p;
    CoordTensor tScS;  // (row, col) inside the tile of each accumulator value of this thread
    // [lo, hi) of this thread's rows, minus this thread's first key column: compared with the static column
    // offsets of the accumulator view.
    int lo[kRows];
    int hi[kRows];

    CUTLASS_DEVICE BlockSparseMask(TileMaskParams const& params, int thread_idx)
        : p(params),
          tScS(TiledMmaQK{}.get_thread_slice(thread_idx).partition_C(
              make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}))) {}

    // Visible key range of this thread's rows of the row tile starting at row_start (rows past L see nothing).
    // Once per work tile, only when the tile has partial visits.
    CUTLASS_DEVICE void load_rows(int row_start) {
        Tensor rowcol = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
        int const col0 = get<1>(rowcol(0, 0));
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
            int const row = row_start + get<0>(rowcol(r, 0));
            bool const inside = row < p.seqlen;
            lo[r] = (inside ? __ldg(p.row_lo + row) : 0) - col0;
            hi[r] = (inside ? __ldg(p.row_hi + row) : 0) - col0;
        }
    }

    // before_softmax hook of a partial tile: scores of invisible (row, key) pairs become -inf. Per row one min
    // and two subtractions; per score two compares against immediates and one select.
    template <class TensorS>
    CUTLASS_DEVICE void before_softmax(TensorS& s_rowcol, ColTile const& col) const {
        Tensor rowcol = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
        constexpr int kCols = decltype(size<1>(s_rowcol))::value;
        int const col0 = get<1>(rowcol(0, 0));
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kRows; ++r) {
            // key c (column offset k = c - col.start - col0 of this thread) is visible iff lo_k <= k < hi_k
            int const lo_k = lo[r] - col.start;
            int const hi_k = min(hi[r], col.end - col0) - col.start;
            CUTLASS_PRAGMA_UNROLL
            for (int c = 0; c < kCols; ++c) {
                int const k = get<1>(rowcol(0, c)) - col0;  // compile-time after unrolling
                if (k < lo_k || k >= hi_k) { s_rowcol(r, c) = -INFINITY; }
            }
        }
    }
};

}  // namespace hmar
