"""Tile metadata against dense masks: every tile class, every list, the launch order."""
import numpy as np
import pytest
import torch

from conftest import REAL_SCHEDULES, pattern_bits, pattern_of_kind, random_schedule
from hmar_kernels.schedule import (allowed_pairs, bits_to_matrix, dense_mask, launch_order, named_pattern_bits,
                                   tile_mask)

CPU = torch.device("cpu")


def _expected_tiles(patch_nums, row_bits, bm, bn):
    """Tile classes straight from the dense L×L mask."""
    dense = dense_mask(patch_nums, row_bits).numpy()
    length = dense.shape[0]
    tq, tk = -(-length // bm), -(-length // bn)
    tiles = np.zeros((tq, tk), dtype=np.int8)
    for m in range(tq):
        for n in range(tk):
            block = dense[m * bm:(m + 1) * bm, n * bn:(n + 1) * bn]
            inside = (m + 1) * bm <= length and (n + 1) * bn <= length
            tiles[m, n] = 2 if block.all() and inside else (1 if block.any() else 0)
    return tiles


def _lists(offsets, num_full, indices, tiles):
    offsets, num_full, indices = offsets.tolist(), num_full.tolist(), indices.tolist()
    for row, classes in enumerate(tiles):
        visited = indices[offsets[row]:offsets[row + 1]]
        full = visited[:num_full[row]]
        assert sorted(full) == np.flatnonzero(classes == 2).tolist()
        assert sorted(visited[num_full[row]:]) == np.flatnonzero(classes == 1).tolist()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("tile", [(16, 16), (32, 16), (16, 64), (128, 64)])
def test_tile_mask_matches_dense(seed, tile):
    rng = np.random.default_rng(seed)
    patch_nums = random_schedule(rng, max_scales=6, max_side=9)
    row_bits = pattern_of_kind(rng, seed, len(patch_nums))
    mask = tile_mask(patch_nums, row_bits, *tile, CPU)
    expected = _expected_tiles(patch_nums, row_bits, *tile)
    np.testing.assert_array_equal(mask.tiles, expected)
    _lists(mask.kv_offsets, mask.kv_num_full, mask.kv_indices, expected)
    _lists(mask.q_offsets, mask.q_num_full, mask.q_indices, expected.T)
    assert torch.equal(mask.to_dense(), dense_mask(patch_nums, row_bits))
    assert mask.level.tolist() == np.repeat(np.arange(len(patch_nums)), [p * p for p in patch_nums]).tolist()
    assert mask.allowed_pairs() == int(dense_mask(patch_nums, row_bits).sum())


@pytest.mark.parametrize("px,diag,causal", [(256, 110_468, 286_434), (512, 1_522_100, 3_269_850),
                                            (1024, 24_587_383, 56_954_392)])
def test_allowed_pairs_of_real_schedules(px, diag, causal):
    pn = REAL_SCHEDULES[px]
    assert allowed_pairs(pn, named_pattern_bits("block_diagonal", len(pn))) == diag
    assert allowed_pairs(pn, named_pattern_bits("block_causal", len(pn))) == causal


def test_tile_waste_at_256px():
    """kernel_targets.md: 128×128 global tiles do 2.97× the exact work (diagonal), 1.60× (causal)."""
    pn = REAL_SCHEDULES[256]
    for name, waste in (("block_diagonal", 2.97), ("block_causal", 1.60)):
        mask = tile_mask(pn, named_pattern_bits(name, len(pn)), 128, 128, CPU)
        assert mask.visited_pairs() / mask.allowed_pairs() == pytest.approx(waste, abs=0.005)


def test_tile_mask_is_cached_and_printable():
    pn = REAL_SCHEDULES[256]
    bits = named_pattern_bits("block_causal", len(pn))
    mask = tile_mask(pn, bits, 64, 64, CPU)
    assert tile_mask(pn, bits, 64, 64, CPU) is mask
    text = repr(mask)
    assert "block_causal" in text and "L=680" in text and "#" in text and "+" in text
    assert 0 < mask.sparsity() < 1


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


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_matches_flex_block_mask(pattern):
    """Our 128×128 tile classes agree with FlexAttention's create_block_mask on full/partial/skipped tiles."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    bits = named_pattern_bits(pattern, len(pn))
    allowed = torch.from_numpy(bits_to_matrix(bits))
    level = torch.from_numpy(np.repeat(np.arange(len(pn)), [p * p for p in pn]))
    length = level.numel()
    block_mask = flex.create_block_mask(lambda b, h, q, k: allowed[level[q], level[k]], None, None, length, length,
                                        device="cpu", BLOCK_SIZE=128)
    dense = block_mask.to_dense()[0, 0].numpy()[: -(-length // 128), : -(-length // 128)]
    ours = tile_mask(pn, bits, 128, 128, CPU).tiles
    np.testing.assert_array_equal(ours > 0, dense > 0)
