"""Patch schedules, official mask schedules and their validation (patch_nums themselves are checked by
hmar_kernels.tiles.validate_patch_nums).

A patch schedule ``patch_nums = (p_0, ..., p_{K-1})`` lists the side of every token map, small to large; scale k
holds n_k = p_k² tokens, row-major, at positions [begin_k, begin_k + n_k) of a sequence of L = Σ n_k tokens.

A mask schedule gives, for every scale, how many tokens each HMAR step finalises: ``[a_0, a_1, ..., a_{S-1}]``
keeps the a_0 most confident tokens of the next-scale proposal, then runs S − 1 masked-prediction passes, pass s
finalising a_s more tokens (the most confident of the re-sampled ones). Σ a = n_k; ``[n_k]`` means no refinement.
"""
from __future__ import annotations

import itertools
import numbers
from typing import Sequence

from hmar_kernels.tiles import PATCH_NUMS  # the official schedules by resolution

# The official sampling default (used for FID): refinement at 2×2 (one masked pass) and 3×3 (three passes).
DEFAULT_MASK_SCHEDULE_256 = ((1,), (1, 3), (1, 1, 2, 5), (16,), (25,), (36,), (64,), (100,), (169,), (256,))

# The schedules of the official inference benchmark, one per resolution (256 differs from the default at 3×3).
BENCHMARK_MASK_SCHEDULES = {
    256: ((1,), (1, 3), (1, 3, 5), (16,), (25,), (36,), (64,), (100,), (169,), (256,)),
    512: ((1,), (1, 3), (1, 1, 2, 5), (5, 11), (36,), (81,), (169,), (324,), (576,), (1024,)),
    1024: ((1,), (1, 3), (1, 1, 2, 5), (3, 5, 8), (25,), (49,), (81,), (144,), (256,), (441,), (729,), (1296,),
           (2304,), (4096,)),
}


def scale_slices(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
    """[(begin_k, end_k)] of every scale in the flattened sequence."""
    ends = list(itertools.accumulate(p * p for p in patch_nums))
    return list(zip([0] + ends[:-1], ends))


def seq_len(patch_nums: Sequence[int]) -> int:
    return sum(p * p for p in patch_nums)


def no_refinement_schedule(patch_nums: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """One next-scale pass per scale, no masked refinement."""
    return tuple((p * p,) for p in patch_nums)


def default_mask_schedule(patch_nums: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The official schedule for a known resolution (sampling default at 256 px, benchmark ones at 512/1024)."""
    patch_nums = tuple(patch_nums)
    if patch_nums == PATCH_NUMS[256]:
        return DEFAULT_MASK_SCHEDULE_256
    for px, pn in PATCH_NUMS.items():
        if pn == patch_nums:
            return BENCHMARK_MASK_SCHEDULES[px]
    return no_refinement_schedule(patch_nums)


def validate_mask_schedule(schedule, patch_nums: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Check a per-scale mask schedule against ``patch_nums`` and return it as a tuple of tuples.

    Raises TypeError naming the scale when an entry is not a list of ints (the rule of ``patch_nums``), ValueError
    when a count is negative, an entry is empty or does not sum to the scale's token count, or the schedule has the
    wrong number of scales; scale 0 (the start token) cannot be refined.
    """
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence):
        raise TypeError(f"mask_schedule must be a sequence of per-scale count lists, got {type(schedule).__name__}")
    if len(schedule) != len(patch_nums):
        raise ValueError(f"mask_schedule has {len(schedule)} entries but patch_nums {tuple(patch_nums)} has "
                         f"{len(patch_nums)} scales; give one count list per scale")
    out = []
    for si, (entry, p) in enumerate(zip(schedule, patch_nums)):
        if isinstance(entry, numbers.Integral):
            entry = (entry,)
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence):
            raise TypeError(f"mask_schedule[{si}] must be a non-empty list of counts, got {entry!r}")
        if len(entry) == 0:
            raise ValueError(f"mask_schedule[{si}] must be a non-empty list of counts, got {entry!r}")
        for a in entry:
            if isinstance(a, bool) or not isinstance(a, numbers.Integral):
                raise TypeError(f"mask_schedule[{si}] = {list(entry)} must hold non-negative ints, got {a!r}")
            if a < 0:
                raise ValueError(f"mask_schedule[{si}] = {list(entry)} must hold non-negative ints, got {a!r}")
        if sum(entry) != p * p:
            raise ValueError(f"mask_schedule[{si}] = {list(entry)} sums to {sum(entry)} but scale {si} "
                             f"({p}×{p}) has {p * p} tokens; the counts must sum to the scale's token count")
        if si == 0 and len(entry) > 1:
            raise ValueError(f"mask_schedule[0] = {list(entry)}: scale 0 holds the start token and cannot be "
                             f"refined; use [{p * p}]")
        out.append(tuple(int(a) for a in entry))
    return tuple(out)
