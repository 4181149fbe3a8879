"""Tile metadata, with the schedules and scale-level patterns it is built from: the mask as data.

Words, as the kernel layer uses them: a *schedule* is ``patch_nums``; a *pattern* is the scale-level S×S
boolean matrix (or its row bitmasks ``row_bits``); a ``TileMask`` is the per-tile lists the kernels walk; the
*dense mask* is the (L, L) boolean matrix the sdpa anchor and the tests use; inside a kernel, *visible* columns are
those a partial tile lets through. (The models' "refinement schedule" and "edit mask" are other things:
hmar_model.)

A schedule is the tuple ``patch_nums = (p_0, ..., p_{S-1})``: scale i holds n_i = p_i² tokens at positions
[start_i, start_i + n_i) of a sequence of L = Σ n_i tokens (row-major inside a scale).

A pattern says which scales may attend which: ``allowed[i][j]`` is True when queries of scale i may attend keys
of scale j. Kernels read it as S bitmasks, ``row_bits[i] = Σ_j allowed[i][j] << j``::

    block_diagonal (HMAR)     block_causal (VAR)
        keys 0 1 2                keys 0 1 2
    q 0      x . .            q 0      x . .
      1      . x .              1      x x .
      2      . . x              2      x x x

``TileMask`` turns (schedule, pattern, tile shape) into the per-tile lists every kernel walks. Tiles are aligned
to the schedule rather than to a global grid: a row tile never straddles two scales, and the column tiles of a row
tile start at the first position of each run of allowed scales. Most tiles are then full (no mask at all), and
the rest need only a column bound. It is built once per (schedule, pattern, tile shape, device) and cached.
"""
from __future__ import annotations

import functools
import itertools
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .resident import host_to_device, resident

# Patterns travel as int32 bitmasks (one per scale) through the API and its caches.
MAX_SCALES = 31

NAMED_PATTERNS = ("block_diagonal", "block_causal")

# The official schedules (VAR / HMAR) by image resolution in pixels.
PATCH_NUMS = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),  # L = 680
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),  # L = 2240
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),  # L = 9451
}


def validate_patch_nums(patch_nums) -> tuple[int, ...]:
    """patch_nums as a tuple of ints, checked: TypeError for a non-sequence or a non-int entry, ValueError for an
    empty schedule, too many scales or a side that is not positive. The one check of a schedule (the kernels' API
    and the models use it)."""
    if isinstance(patch_nums, np.ndarray) and patch_nums.ndim == 1:
        patch_nums = patch_nums.tolist()
    if isinstance(patch_nums, (str, bytes)) or not isinstance(patch_nums, Sequence):
        raise TypeError(f"patch_nums must be a sequence of positive ints, got {type(patch_nums).__name__}")
    if len(patch_nums) == 0:
        raise ValueError("patch_nums is empty: give at least one scale, e.g. (1, 2, 3, 4)")
    if len(patch_nums) > MAX_SCALES:
        raise ValueError(f"patch_nums has {len(patch_nums)} scales; at most {MAX_SCALES} are supported")
    for p in patch_nums:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise TypeError(f"patch_nums must hold ints, got {p!r} ({type(p).__name__}) in {tuple(patch_nums)}")
        if p <= 0:
            raise ValueError(f"patch_nums must be positive, got {p} in {tuple(patch_nums)}")
    return tuple(int(p) for p in patch_nums)


def scale_bounds(patch_nums: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(starts, sizes, L) of a validated schedule (plain Python, so torch.compile traces it)."""
    sizes = tuple(p * p for p in patch_nums)
    starts = tuple(itertools.accumulate(sizes[:-1], initial=0))
    return starts, sizes, sum(sizes)


def named_pattern_bits(name: str, num_scales: int) -> tuple[int, ...]:
    """row_bits of a named pattern over ``num_scales`` scales."""
    if name == "block_diagonal":
        return tuple(1 << i for i in range(num_scales))
    if name == "block_causal":
        return tuple((1 << (i + 1)) - 1 for i in range(num_scales))
    raise ValueError(f"pattern must be one of {NAMED_PATTERNS} or an S×S boolean matrix, got {name!r}")


def bits_to_matrix(row_bits: Sequence[int]) -> np.ndarray:
    """(S, S) bool matrix of a pattern given as row bitmasks."""
    s = len(row_bits)
    return np.array([[(row_bits[i] >> j) & 1 for j in range(s)] for i in range(s)], dtype=bool)


def pattern_name(row_bits: Sequence[int]) -> str:
    """'block_diagonal', 'block_causal' or 'custom'."""
    for name in NAMED_PATTERNS:
        if tuple(row_bits) == named_pattern_bits(name, len(row_bits)):
            return name
    return "custom"


def allowed_pairs(patch_nums: tuple[int, ...], row_bits: tuple[int, ...]) -> int:
    """Exact number of allowed (query, key) pairs of one sequence: Σ_ij allowed[i][j]·n_i·n_j."""
    _, sizes, _ = scale_bounds(patch_nums)
    n = np.array(sizes, dtype=np.int64)
    return int(n @ bits_to_matrix(row_bits).astype(np.int64) @ n)


def position_levels(patch_nums: tuple[int, ...]) -> np.ndarray:
    """(L,) int32: the scale of every position."""
    _, sizes, _ = scale_bounds(patch_nums)
    return np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)


def dense_mask(patch_nums: tuple[int, ...], row_bits: tuple[int, ...], device=None) -> torch.Tensor:
    """(L, L) bool: True where query t may attend key s."""
    lvl = torch.from_numpy(position_levels(patch_nums)).long()
    allowed = torch.from_numpy(bits_to_matrix(row_bits))
    return allowed[lvl[:, None], lvl[None, :]].to(device)


def transpose_bits(row_bits: Sequence[int]) -> tuple[int, ...]:
    """Bitmasks of the transposed pattern: bit i of result[j] is set iff scale i may attend scale j."""
    s = len(row_bits)
    return tuple(sum(((row_bits[i] >> j) & 1) << i for i in range(s)) for j in range(s))


def allowed_runs(bits: int, starts: Sequence[int], ends: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive allowed scales of one row, as position ranges [first, end)."""
    runs, j, s = [], 0, len(starts)
    while j < s:
        if (bits >> j) & 1:
            k = j
            while k + 1 < s and (bits >> (k + 1)) & 1:
                k += 1
            runs.append((starts[j], ends[k]))
            j = k + 1
        else:
            j += 1
    return runs


@dataclass(frozen=True, eq=False)
class TileMask:
    """The tiles a kernel visits, cut along the schedule rather than on a global grid.

    *Rows* are the side a program owns (queries in the forward and for dQ; keys for dK/dV, built from the
    transposed pattern), *columns* the side it loops over. Row r may attend the columns of its scale's allowed
    scales; when those form one contiguous range (block-diagonal, block-causal, any banded pattern) it is
    [row_lo[r], row_hi[r]), and row tiles may hold rows of several scales: the cuts are chosen (dynamic
    programming) to visit the fewest column tiles, so a big scale gets tiles aligned to its own start and small
    scales share one. Rows of a scale whose allowed columns form several runs keep tiles of their own scale, and
    [row_lo, row_hi) is the hull of the runs.

    Row tile t owns rows [row_start[t], row_end[t]) and computes block_m rows from row_start[t] (the rest are
    dropped). It visits column tiles [col_start[e], col_start[e] + block_n) for e in col_offsets[t] :
    col_offsets[t+1], full ones (every owned row sees every column) first. A partial tile shows column c to row r
    iff row_lo[r] <= c < min(row_hi[r], col_end[e]); col_end is the end of the run the tile belongs to, so a tile
    never reaches into another run, or past L.

    Device tensors, all int32:
      row_lo, row_hi      (L,)      the columns each row may attend (hull of its runs)
      row_start, row_end  (T,)      row tiles
      col_offsets         (T+1,)    CSR offsets of the visited column tiles of each row tile
      col_num_full        (T,)      how many of them, listed first, are full
      col_start, col_end  (nnz,)    first column of each visited tile, end of its run
    Host copies (numpy) of the same arrays back ``to_dense``, ``__repr__`` and the launch order.
    """

    patch_nums: tuple[int, ...]
    row_bits: tuple[int, ...]
    block_m: int
    block_n: int
    device: torch.device
    length: int
    host: dict  # name → numpy array, one per device tensor below
    row_lo: torch.Tensor
    row_hi: torch.Tensor
    row_start: torch.Tensor
    row_end: torch.Tensor
    col_offsets: torch.Tensor
    col_num_full: torch.Tensor
    col_start: torch.Tensor
    col_end: torch.Tensor

    # The tables in the order every kernel takes them (Triton kernels; csrc/api.h's TileTables names them).
    KERNEL_FIELDS = ("row_lo", "row_hi", "row_start", "row_end", "col_offsets", "col_num_full", "col_start", "col_end")

    @property
    def num_tiles(self) -> int:
        """Row tiles (programs per batch·head)."""
        return len(self.host["row_start"])

    @property
    def visits(self) -> np.ndarray:
        """(T,) column tiles each row tile visits."""
        return np.diff(self.host["col_offsets"])

    def num_partial(self) -> int:
        return int(self.visits.sum() - self.host["col_num_full"].sum())

    def allowed_pairs(self) -> int:
        return allowed_pairs(self.patch_nums, self.row_bits)

    def visited_pairs(self) -> int:
        """(row, column) pairs the kernels compute, tile padding included."""
        return int(self.visits.sum()) * self.block_m * self.block_n

    def to_dense(self) -> torch.Tensor:
        """(L, L) bool: the (row, column) pairs the kernels let through, by the rules above (for tests)."""
        h = self.host
        dense = np.zeros((self.length, self.length), dtype=bool)
        cols = np.arange(self.length)
        for t in range(self.num_tiles):
            for e in range(h["col_offsets"][t], h["col_offsets"][t + 1]):
                for r in range(h["row_start"][t], h["row_end"][t]):
                    c = cols[h["col_start"][e]:h["col_start"][e] + self.block_n]
                    dense[r, c[(c >= h["row_lo"][r]) & (c < min(h["row_hi"][r], h["col_end"][e]))]] = True
        return torch.from_numpy(dense)

    def __repr__(self) -> str:
        return (f"TileMask(patch_nums={self.patch_nums}, pattern={pattern_name(self.row_bits)}, L={self.length}, "
                f"tile={self.block_m}x{self.block_n}, row_tiles={self.num_tiles}, visits={int(self.visits.sum())}, "
                f"partial={self.num_partial()}, work/exact={self.visited_pairs() / self.allowed_pairs():.3f})")


def _cut_rows(lo: np.ndarray, hi: np.ndarray, first: int, last: int, block_m: int, block_n: int,
              scale_starts: Sequence[int]) -> list[int]:
    """Cut rows [first, last) into row tiles of at most block_m rows, visiting the fewest column tiles (each row
    tile also costs one visit's worth of fixed work). A tile [a, b) visits ceil((max hi - min lo) / block_n)
    column tiles. An optimal tile starts either block_m rows before its end or at a scale start (moving any
    other start back keeps its scales and only shrinks the previous tile). Returns the cut positions."""
    best = {first: (0, first)}  # position → (cost of rows [first, position), previous cut)
    starts = [s for s in scale_starts if first < s < last]
    for b in range(first + 1, last + 1):
        candidates = {max(first, b - block_m)} | {s for s in starts if b - block_m < s < b}
        options = []
        for a in candidates:
            span = int(hi[a:b].max()) - int(lo[a:b].min())
            options.append((best[a][0] + -(-span // block_n) + 1, a))
        best[b] = min(options)
    cuts = [last]
    while cuts[-1] != first:
        cuts.append(best[cuts[-1]][1])
    return cuts[::-1]


def _tile_lists(patch_nums, row_bits, block_m, block_n) -> dict:
    """Host arrays of a TileMask (see its docstring)."""
    starts, sizes, length = scale_bounds(patch_nums)
    ends = [a + n for a, n in zip(starts, sizes)]
    runs = [allowed_runs(bits, starts, ends) for bits in row_bits]
    lo = np.repeat([r[0][0] if r else 0 for r in runs], sizes).astype(np.int64)
    hi = np.repeat([r[-1][1] if r else 0 for r in runs], sizes).astype(np.int64)

    # Row tiles: scales with one run (or none) share tiles, cut by _cut_rows; a scale with several runs is cut
    # into block_m-row tiles from its start, and visits each run from the run's start.
    tiles = []  # (row_start, row_end, [column tile starts], col_end per tile, full flags)
    i = 0
    while i < len(patch_nums):
        if len(runs[i]) > 1:
            for row in range(starts[i], ends[i], block_m):
                visits = [(c, e, c + block_n <= e) for first, e in runs[i] for c in range(first, e, block_n)]
                tiles.append((row, min(row + block_m, ends[i]), visits))
            i += 1
            continue
        j = i
        while j + 1 < len(patch_nums) and len(runs[j + 1]) <= 1:
            j += 1
        cuts = _cut_rows(lo, hi, starts[i], ends[j], block_m, block_n, starts)
        for a, b in zip(cuts[:-1], cuts[1:]):
            seen = hi[a:b] > lo[a:b]  # rows of scales that attend nothing do not widen the tile
            visits = []
            if seen.any():
                c_lo, c_hi = int(lo[a:b][seen].min()), int(hi[a:b][seen].max())
                full_lo = int(lo[a:b].max()) if seen.all() else c_hi
                full_hi = int(hi[a:b].min()) if seen.all() else c_lo
                visits = [(c, c_hi, full_lo <= c and c + block_n <= full_hi) for c in range(c_lo, c_hi, block_n)]
            tiles.append((a, b, visits))
        i = j + 1

    row_start, row_end, offsets, num_full, col_start, col_end = [], [], [0], [], [], []
    for a, b, visits in tiles:
        ordered = [v for v in visits if v[2]] + [v for v in visits if not v[2]]
        row_start.append(a)
        row_end.append(b)
        col_start.extend(c for c, _, _ in ordered)
        col_end.extend(e for _, e, _ in ordered)
        num_full.append(sum(v[2] for v in visits))
        offsets.append(len(col_start))
    arrays = dict(row_lo=lo, row_hi=hi, row_start=row_start, row_end=row_end, col_offsets=offsets,
                  col_num_full=num_full, col_start=col_start, col_end=col_end)
    return {name: np.asarray(values, dtype=np.int32) for name, values in arrays.items()}


@functools.lru_cache(maxsize=128)
def tile_mask(patch_nums: tuple[int, ...], row_bits: tuple[int, ...], block_m: int, block_n: int,
              device: torch.device) -> TileMask:
    """Build (once per arguments, cached) the tile metadata of a validated schedule and pattern. For dK/dV use
    ``tile_mask(patch_nums, transpose_bits(row_bits), block_n, block_m, device)``: its rows are keys."""
    host = _tile_lists(patch_nums, row_bits, block_m, block_n)
    # Empty lists still get one entry, so that every tensor has a valid data pointer.
    dev = resident(lambda: {name: torch.from_numpy(a if a.size else np.zeros(1, np.int32)).to(device)
                            for name, a in host.items()}, device)
    return TileMask(patch_nums=patch_nums, row_bits=row_bits, block_m=block_m, block_n=block_n, device=device,
                    length=int(sum(p * p for p in patch_nums)), host=host, **dev)


class LaunchTables:
    """The device tables one launch reads, in the order its kernel takes them (TileMask tables, then the program
    table, last), with their raw pointers (the Triton launcher passes those instead of the tensors).

    Built with ``packed``, the tables are views of one int32 ``buffer``, each starting 16-byte aligned, and
    ``offsets`` / ``sizes`` give each table's first entry and entry count by name: what the CUDA forward's binding
    takes (csrc/api.h, TileTables).
    """

    ALIGN = 4  # int32 entries per 16 bytes: every table starts 16-byte aligned (Triton specialises on it)

    def __init__(self, tensors: Sequence[torch.Tensor], buffer: torch.Tensor | None = None,
                 offsets: dict | None = None, sizes: dict | None = None):
        self.tensors = tuple(tensors)
        self.pointers = tuple(t.data_ptr() for t in self.tensors)
        self.programs = self.tensors[-1].shape[0]  # rows of the program table: the grid size
        self.buffer, self.offsets, self.sizes = buffer, offsets, sizes

    @classmethod
    def packed(cls, tables: dict, device: torch.device) -> "LaunchTables":
        """One resident int32 buffer holding ``tables`` (name → numpy array, in kernel order); an empty table
        still gets a valid pointer (to zeros)."""
        offsets, sizes, pieces, at = {}, {}, [], 0
        for name, array in tables.items():
            flat = np.ascontiguousarray(array, dtype=np.int32).reshape(-1)
            offsets[name], sizes[name] = at, flat.size
            piece = np.zeros(-(-max(flat.size, 1) // cls.ALIGN) * cls.ALIGN, dtype=np.int32)
            piece[:flat.size] = flat
            pieces.append(piece)
            at += piece.size
        buffer = host_to_device(np.concatenate(pieces), device)
        views = [buffer.narrow(0, offsets[name], max(sizes[name], 1)) for name in tables]
        views[-1] = views[-1].view(-1, *np.shape(tables[next(reversed(tables))])[1:])  # (P, 2) program table
        return cls(views, buffer, offsets, sizes)


# The tables of a forward launch, in kernel order (both backends; csrc/api.h's TileTables names the same fields).
FORWARD_TABLES = TileMask.KERNEL_FIELDS + ("programs",)


@functools.lru_cache(maxsize=256)
def forward_tables(patch_nums: tuple[int, ...], row_bits: tuple[int, ...], block_m: int, block_n: int,
                   batch_heads: int, device: torch.device) -> LaunchTables:
    """The tables a forward launch reads (both backends), packed and cached: the TileMask's tables, then the
    program table of ``launch_order`` over its row tiles."""
    mask = tile_mask(patch_nums, row_bits, block_m, block_n, device)
    tables = {name: mask.host[name] for name in TileMask.KERNEL_FIELDS}
    tables["programs"] = launch_order([mask.visits], batch_heads)
    return LaunchTables.packed(tables, device)


def launch_order(works: Sequence[np.ndarray], batch_heads: int) -> np.ndarray:
    """Program table for a grid of (tile, batch·head) programs of one or more kinds, heaviest first.

    ``works[kind][tile]`` is the relative cost of the program doing ``tile`` of ``kind`` (0 for a tile with
    nothing to visit: its program still runs, to write zeros). Programs are sorted by descending cost; programs
    of equal cost stay grouped by batch·head so that tiles sharing K/V run together and hit L2.
    Returns (P, 2) int32 rows (kind << 24 | tile, batch·head).
    """
    codes = np.concatenate([(kind << 24) | np.arange(len(w)) for kind, w in enumerate(works)])
    cost = np.concatenate([np.asarray(w, dtype=np.float64) for w in works])
    parts = []
    for value in np.unique(cost)[::-1]:  # groups of equal cost, heaviest first; head-major inside a group
        group = codes[cost == value]
        parts.append(np.stack([np.tile(group, batch_heads),
                               np.repeat(np.arange(batch_heads), len(group))], axis=1))
    return np.concatenate(parts).astype(np.int32)


@functools.lru_cache(maxsize=256)
def backward_tables(patch_nums: tuple[int, ...], row_bits: tuple[int, ...], rows: int, cols: int,
                    batch_heads: int, device: torch.device) -> tuple[LaunchTables, LaunchTables, LaunchTables]:
    """The tables a CUDA backward launch reads, packed and cached (built once per schedule): (kv, q, pairs).
    kv: the transposed pattern's (rows = keys, the dK/dV programs), q: the pattern's (rows = queries, a separate
    dQ pass), both with the backward's (rows, cols) tile; pairs: one program table over both kinds (kind 0 a kv
    tile, kind 1 a q tile, weighted by their GEMMs per visit, 4 and 3) for configs that launch them together."""
    kv = forward_tables(patch_nums, transpose_bits(row_bits), rows, cols, batch_heads, device)
    q = forward_tables(patch_nums, row_bits, rows, cols, batch_heads, device)
    kv_visits = tile_mask(patch_nums, transpose_bits(row_bits), rows, cols, device).visits
    q_visits = tile_mask(patch_nums, row_bits, rows, cols, device).visits
    pairs = LaunchTables.packed({"programs": launch_order([4 * kv_visits, 3 * q_visits], batch_heads)}, device)
    return kv, q, pairs
