"""Kernel options: the one place for tuning knobs and test switches, per call or for a block of calls.

    out = hmar_kernels.attention(q, k, v, patch_nums, backend="triton",
                                 options=hmar_kernels.KernelOptions(triton_fwd=FwdConfig(64, 64, 4, 3)))
    with hmar_kernels.kernel_options(poison_outputs=True):
        out = hmar_kernels.attention(q, k, v, patch_nums, backend="triton")

Options live in a context variable (each thread its own); the backward of a call runs with its forward's options,
whatever thread the autograd engine runs it on.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional


CUDA_SCHEDULERS = ("dynamic", "static", "grid")
CUDA_BACKWARDS = ("cuda", "triton")


@dataclass(frozen=True)
class KernelOptions:
    triton_fwd: Optional[Any] = None  # a triton.tuning.FwdConfig: use it instead of autotuning the forward
    triton_bwd: Optional[Any] = None  # a triton.tuning.BwdConfig: likewise for the backward
    autotune: bool = True  # time the candidate configs the first time a (schedule, pattern, D, dtype) is seen
    poison_outputs: bool = False  # fill kernel outputs with NaN before the kernels write them (tests)
    cuda_fwd_config: int = 0  # row of csrc/tile_size.h's fwd_tile_sm90 table (0: the default tile)
    cuda_scheduler: str = "dynamic"  # "dynamic": one CTA per SM claiming programs in table order (atomic
    # counter); "static": one CTA per SM striding the table; "grid": one CTA per program
    cuda_backward: str = "cuda"  # backward of backends "cuda"/"cuda_sm80": "cuda" (their own kernels) or "triton"
    cuda_bwd_config: Optional[int] = None  # row of csrc/bwd_tile_size.h's bwd_tile_sm90 table; None: the default
    # (deterministic; hmar_kernels._C.bwd_default_config)

    def __post_init__(self):
        if self.cuda_scheduler not in CUDA_SCHEDULERS:
            raise ValueError(f"cuda_scheduler must be one of {CUDA_SCHEDULERS}, got {self.cuda_scheduler!r}")
        if self.cuda_backward not in CUDA_BACKWARDS:
            raise ValueError(f"cuda_backward must be one of {CUDA_BACKWARDS}, got {self.cuda_backward!r}")
        if self.cuda_bwd_config is not None and (isinstance(self.cuda_bwd_config, bool) or
                                                 not isinstance(self.cuda_bwd_config, int)):
            raise TypeError(f"cuda_bwd_config must be an int or None, got {type(self.cuda_bwd_config).__name__}")


_current: contextvars.ContextVar[KernelOptions] = contextvars.ContextVar("hmar_kernel_options",
                                                                        default=KernelOptions())


def current_options() -> KernelOptions:
    """The options of this thread (context): set by ``kernel_options``/``using_options``, else the defaults."""
    return _current.get()


@contextlib.contextmanager
def using_options(options: KernelOptions):
    """Run the enclosed calls with ``options`` (this thread only)."""
    if not isinstance(options, KernelOptions):
        raise TypeError(f"options must be a hmar_kernels.KernelOptions, got {type(options).__name__}")
    token = _current.set(options)
    try:
        yield options
    finally:
        _current.reset(token)


def kernel_options(**changes):
    """Context manager: the current options with ``changes`` for the enclosed calls (this thread only; an
    autograd backward runs with the options of its forward). ``attention(..., options=...)`` does the same for
    one call."""
    return using_options(dataclasses.replace(current_options(), **changes))
