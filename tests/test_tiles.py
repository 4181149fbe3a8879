"""Tile metadata against dense masks: every tile class, every list, the launch order."""
import numpy as np
import pytest
import torch

from conftest import REAL_SCHEDULES, pattern_bits, pattern_of_kind, random_schedule
from hmar_kernels.tiles import (allowed_pairs, bits_to_matrix, dense_mask, launch_order, named_pattern_bits,
                                   tile_mask, transpose_bits)

CPU = torch.device("cpu")


def _visible_pairs(mask) -> np.ndarray:
    """(L, L) int: how many times the kernels would compute each (row, column) pair, from the metadata alone.
    Also checks that every full tile really needs no mask."""
    h, length = mask.host, mask.length
    count = np.zeros((length, length), dtype=np.int64)
    for t in range(mask.num_tiles):
        rows = np.arange(h["row_start"][t], h["row_end"][t])
        first, last = h["col_offsets"][t], h["col_offsets"][t + 1]
        for e in range(first, last):
            cols = np.arange(h["col_start"][e], h["col_start"][e] + mask.block_n)
            hi = np.minimum(h["row_hi"][rows], h["col_end"][e])
            seen = (cols[None, :] >= h["row_lo"][rows][:, None]) & (cols[None, :] < hi[:, None])
            if e < first + h["col_num_full"][t]:
                assert seen.all(), f"tile {t} visit {e} is listed full but needs a mask"
            r, c = np.nonzero(seen)
            np.add.at(count, (rows[r], cols[c]), 1)
    return count


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("tile", [(16, 16), (32, 16), (16, 64), (128, 64)])
def test_tile_mask_matches_dense(seed, tile):
    """Every allowed pair is computed exactly once, no other pair is, by the row tiles (queries) and by the
    transposed pattern's row tiles (keys); row tiles own every row exactly once, at most block_m of them."""
    rng = np.random.default_rng(seed)
    patch_nums = random_schedule(rng, max_scales=6, max_side=9)
    row_bits = pattern_of_kind(rng, seed, len(patch_nums))
    dense = dense_mask(patch_nums, row_bits).numpy()
    for mask, expected in ((tile_mask(patch_nums, row_bits, *tile, CPU), dense),
                           (tile_mask(patch_nums, transpose_bits(row_bits), *tile[::-1], CPU), dense.T)):
        np.testing.assert_array_equal(_visible_pairs(mask), expected.astype(np.int64))
        assert torch.equal(mask.to_dense(), torch.from_numpy(expected))
        h = mask.host
        owned = np.concatenate([np.arange(a, b) for a, b in zip(h["row_start"], h["row_end"])])
        np.testing.assert_array_equal(np.sort(owned), np.arange(mask.length))
        assert (h["row_end"] - h["row_start"] <= mask.block_m).all()
        assert (h["col_end"] <= mask.length).all() and (h["col_start"] < h["col_end"]).all()
        assert mask.allowed_pairs() == int(expected.sum())


@pytest.mark.parametrize("px,diag,causal", [(256, 110_468, 286_434), (512, 1_522_100, 3_269_850),
                                            (1024, 24_587_383, 56_954_392)])
def test_allowed_pairs_of_real_schedules(px, diag, causal):
    pn = REAL_SCHEDULES[px]
    assert allowed_pairs(pn, named_pattern_bits("block_diagonal", len(pn))) == diag
    assert allowed_pairs(pn, named_pattern_bits("block_causal", len(pn))) == causal


@pytest.mark.parametrize("px,pattern,grid", [(256, "block_diagonal", 2.97), (256, "block_causal", 1.60),
                                            (1024, "block_diagonal", 1.094), (1024, "block_causal", 1.024)])
def test_schedule_aligned_tiles_waste_less_than_a_global_grid(px, pattern, grid):
    """Work/exact of 128×128 tiles on a global grid (docs/benchmarks.md) against ours, for both passes."""
    pn = REAL_SCHEDULES[px]
    bits = named_pattern_bits(pattern, len(pn))
    for mask in (tile_mask(pn, bits, 128, 128, CPU), tile_mask(pn, transpose_bits(bits), 128, 128, CPU)):
        assert mask.visited_pairs() / mask.allowed_pairs() < grid - 0.005


def test_tile_mask_is_cached_and_printable():
    pn = REAL_SCHEDULES[256]
    bits = named_pattern_bits("block_causal", len(pn))
    mask = tile_mask(pn, bits, 64, 64, CPU)
    assert tile_mask(pn, bits, 64, 64, CPU) is mask
    text = repr(mask)
    assert "block_causal" in text and "L=680" in text and "partial=" in text


@pytest.mark.parametrize("seed", range(4))
def test_launch_order_covers_every_program_once(seed):
    rng = np.random.default_rng(seed)
    works = [rng.integers(0, 5, size=int(rng.integers(1, 9))) for _ in range(2)]
    heads = int(rng.integers(1, 7))
    table = launch_order(works, heads)
    expected = {((kind << 24) | t, bh) for kind, w in enumerate(works) for t in range(len(w)) for bh in range(heads)}
    assert {tuple(r) for r in table.tolist()} == expected and len(table) == len(expected)
    cost = [works[code >> 24][code & 0xFFFFFF] for code, _ in table.tolist()]
    assert cost == sorted(cost, reverse=True), "heaviest programs must come first"


def test_bits_round_trip():
    matrix = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=bool)
    assert (bits_to_matrix(pattern_bits(matrix)) == matrix).all()
    assert bits_to_matrix(named_pattern_bits("block_causal", 4)).tolist() == np.tril(np.ones((4, 4), bool)).tolist()


def test_transpose_bits():
    matrix = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=bool)
    assert (bits_to_matrix(transpose_bits(pattern_bits(matrix))) == matrix.T).all()


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_visits_no_more_than_flex_block_mask(pattern):
    """FlexAttention's create_block_mask (global 128×128 grid) visits at least as many tiles as our metadata."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    bits = named_pattern_bits(pattern, len(pn))
    allowed = torch.from_numpy(bits_to_matrix(bits))
    level = torch.from_numpy(np.repeat(np.arange(len(pn)), [p * p for p in pn]))
    length = level.numel()
    block_mask = flex.create_block_mask(lambda b, h, q, k: allowed[level[q], level[k]], None, None, length, length,
                                        device="cpu", BLOCK_SIZE=128)
    tiles = -(-length // 128)
    flex_visits = int((block_mask.to_dense()[0, 0].numpy()[:tiles, :tiles] > 0).sum())
    assert int(tile_mask(pn, bits, 128, 128, CPU).visits.sum()) <= flex_visits
