"""Multi-scale schedules, scale-level patterns and tile metadata: the mask as data.

A schedule is the tuple ``patch_nums = (p_0, ..., p_{S-1})``: scale i holds n_i = p_i² tokens at positions
[start_i, start_i + n_i) of a sequence of L = Σ n_i tokens (row-major inside a scale).

A pattern says which scales may attend which: ``allowed[i][j]`` is True when queries of scale i may attend keys
of scale j. Kernels read it as S bitmasks, ``row_bits[i] = Σ_j allowed[i][j] << j``::

    block_diagonal (HMAR)     block_causal (VAR)
        keys 0 1 2                keys 0 1 2
    q 0      x . .            q 0      x . .
      1      . x .              1      x x .
      2      . . x              2      x x x

``TileMask`` turns (schedule, pattern, tile shape) into the per-tile lists every kernel walks: for each Q tile,
the KV tiles it must visit, full ones (every pair allowed, no per-element mask) first; and the transpose for
dK/dV. It is built once per (schedule, pattern, tile shape, device) and cached.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

# Scale levels live in int32 bitmasks; level 31 is the sentinel that kernels give out-of-range positions,
# and no row ever allows it.
MAX_SCALES = 31
OUT_OF_RANGE_LEVEL = 31

NAMED_PATTERNS = ("block_diagonal", "block_causal")


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


@dataclass(frozen=True, eq=False)
class TileMask:
    """Which KV tiles each Q tile visits, and which of them need the per-element mask.

    Q tile m covers rows [m·block_m, (m+1)·block_m) ∩ [0, L); KV tile n covers keys [n·block_n, ...) likewise.
    A visited tile is *full* when every (row, key) pair in it is allowed and both tiles lie inside [0, L);
    otherwise it is *partial* and the kernel masks it element by element with ``level`` and ``row_bits``.

    Device tensors, all int32:
      level        (L,)      scale of each position
      row_bits     (S,)      bit j set iff scale i may attend scale j
      kv_offsets   (Tq+1,)   KV tiles of Q tile m are kv_indices[kv_offsets[m]:kv_offsets[m+1]], full ones first
      kv_num_full  (Tq,)
      kv_indices   (nnz,)
      q_offsets, q_num_full, q_indices: the transpose (Q tiles of each KV tile), for dK/dV
    Host copies (numpy) of the same lists back ``__repr__``, ``to_dense`` and the launch order.
    """

    patch_nums: tuple[int, ...]
    row_bits: tuple[int, ...]
    block_m: int
    block_n: int
    device: torch.device
    length: int
    tiles: np.ndarray  # (Tq, Tk) int8: 0 skipped, 1 partial, 2 full
    level: torch.Tensor
    row_bits_t: torch.Tensor
    kv_offsets: torch.Tensor
    kv_num_full: torch.Tensor
    kv_indices: torch.Tensor
    q_offsets: torch.Tensor
    q_num_full: torch.Tensor
    q_indices: torch.Tensor

    @property
    def num_q_tiles(self) -> int:
        return self.tiles.shape[0]

    @property
    def num_kv_tiles(self) -> int:
        return self.tiles.shape[1]

    @property
    def kv_visits(self) -> np.ndarray:
        """(Tq,) number of KV tiles each Q tile visits."""
        return (self.tiles > 0).sum(1)

    @property
    def q_visits(self) -> np.ndarray:
        """(Tk,) number of Q tiles each KV tile is visited by."""
        return (self.tiles > 0).sum(0)

    def allowed_pairs(self) -> int:
        return allowed_pairs(self.patch_nums, self.row_bits)

    def visited_pairs(self) -> int:
        """(query, key) pairs the kernels compute, tile padding included."""
        return int((self.tiles > 0).sum()) * self.block_m * self.block_n

    def sparsity(self) -> float:
        """Fraction of tile pairs skipped."""
        return float((self.tiles == 0).mean())

    def to_dense(self) -> torch.Tensor:
        """(L, L) bool mask this metadata encodes (for tests and pictures)."""
        return dense_mask(self.patch_nums, self.row_bits)

    def picture(self, max_side: int = 48) -> str:
        """ASCII picture of the tile classes: '#' full, '+' partial, '.' skipped (rows = Q tiles)."""
        step = max(1, -(-max(self.tiles.shape) // max_side))
        t = self.tiles[::step, ::step]
        return "\n".join("".join(".+#"[c] for c in row) for row in t)

    def __repr__(self) -> str:
        full = int((self.tiles == 2).sum())
        part = int((self.tiles == 1).sum())
        return (f"TileMask(patch_nums={self.patch_nums}, pattern={pattern_name(self.row_bits)}, L={self.length}, "
                f"tile={self.block_m}x{self.block_n}, tiles={self.num_q_tiles}x{self.num_kv_tiles}, full={full}, "
                f"partial={part}, sparsity={self.sparsity():.3f}, "
                f"work/exact={self.visited_pairs() / self.allowed_pairs():.2f})\n{self.picture()}")


def _classify_tiles(patch_nums, row_bits, block_m, block_n) -> np.ndarray:
    """(Tq, Tk) int8 tile classes, from scale-level rectangle counts (no L×L work)."""
    lvl = position_levels(patch_nums)
    length = len(lvl)
    allowed = bits_to_matrix(row_bits).astype(np.int64)
    # prefix[i, j] = number of allowed level pairs in allowed[:i, :j]
    prefix = np.zeros((allowed.shape[0] + 1, allowed.shape[1] + 1), dtype=np.int64)
    prefix[1:, 1:] = allowed.cumsum(0).cumsum(1)

    def level_range(block):
        first = np.arange(0, length, block)
        last = np.minimum(first + block, length) - 1
        return lvl[first], lvl[last], first + block <= length

    q_lo, q_hi, q_inside = level_range(block_m)
    k_lo, k_hi, k_inside = level_range(block_n)
    a, b = q_lo[:, None], q_hi[:, None] + 1
    c, d = k_lo[None, :], k_hi[None, :] + 1
    count = prefix[b, d] - prefix[a, d] - prefix[b, c] + prefix[a, c]
    every = count == (b - a) * (d - c)
    tiles = np.where(count > 0, 1, 0).astype(np.int8)
    tiles[every & q_inside[:, None] & k_inside[None, :]] = 2
    return tiles


def _tile_lists(tiles: np.ndarray):
    """CSR lists of the visited columns of each row of ``tiles``, full ones first: (offsets, num_full, indices)."""
    offsets, num_full, indices = [0], [], []
    for row in tiles:
        full = np.flatnonzero(row == 2)
        part = np.flatnonzero(row == 1)
        indices.extend(full.tolist() + part.tolist())
        num_full.append(len(full))
        offsets.append(len(indices))
    return offsets, num_full, indices


@functools.lru_cache(maxsize=128)
def tile_mask(patch_nums: tuple[int, ...], row_bits: tuple[int, ...], block_m: int, block_n: int,
              device: torch.device) -> TileMask:
    """Build (once per arguments, cached) the tile metadata of a validated schedule and pattern."""
    tiles = _classify_tiles(patch_nums, row_bits, block_m, block_n)
    kv = _tile_lists(tiles)
    q = _tile_lists(tiles.T)

    def dev(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    return TileMask(
        patch_nums=patch_nums, row_bits=row_bits, block_m=block_m, block_n=block_n, device=device,
        length=int(sum(p * p for p in patch_nums)), tiles=tiles,
        level=dev(position_levels(patch_nums).tolist()), row_bits_t=dev(list(row_bits)),
        kv_offsets=dev(kv[0]), kv_num_full=dev(kv[1]), kv_indices=dev(kv[2] or [0]),
        q_offsets=dev(q[0]), q_num_full=dev(q[1]), q_indices=dev(q[2] or [0]),
    )


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
