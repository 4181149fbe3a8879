"""Kernel options: the one place for tuning knobs and test switches.

    with hmar_kernels.kernel_options(triton_fwd=FwdConfig(64, 64, 4, 3), poison_outputs=True):
        out = hmar_kernels.attention(q, k, v, patch_nums, backend="triton")
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional


CUDA_SCHEDULERS = ("dynamic", "static", "grid")


@dataclass(frozen=True)
class KernelOptions:
    triton_fwd: Optional[Any] = None  # a triton.tuning.FwdConfig: use it instead of autotuning the forward
    triton_bwd: Optional[Any] = None  # a triton.tuning.BwdConfig: likewise for the backward
    autotune: bool = True  # time the candidate configs the first time a (schedule, pattern, D, dtype) is seen
    poison_outputs: bool = False  # fill kernel outputs with NaN before the kernels write them (tests)
    cuda_fwd_config: int = 0  # row of csrc/tile_size.h's fwd_tile_sm90 table (0: the default tile)
    cuda_scheduler: str = "dynamic"  # "dynamic": one CTA per SM claiming programs in table order (atomic
    # counter); "static": one CTA per SM striding the table; "grid": one CTA per program

    def __post_init__(self):
        if self.cuda_scheduler not in CUDA_SCHEDULERS:
            raise ValueError(f"cuda_scheduler must be one of {CUDA_SCHEDULERS}, got {self.cuda_scheduler!r}")


_current = KernelOptions()


def current_options() -> KernelOptions:
    return _current


@contextlib.contextmanager
def kernel_options(**changes):
    """Temporarily change kernel options (not thread-safe: set them around a whole run)."""
    global _current
    saved = _current
    _current = dataclasses.replace(_current, **changes)
    try:
        yield _current
    finally:
        _current = saved
