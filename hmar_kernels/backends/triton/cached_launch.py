"""A thin launch path for Triton kernels: the compiled kernel is looked up once per specialisation, not per call.

``kernel[grid](*args)`` binds and specialises every argument on every call, then the C launcher calls
``data_ptr()`` and ``cuPointerGetAttribute`` for every tensor. Measured on an H100 host's CPU
(bench/call_overhead.py, 256 px): 49 µs per forward launch against 20 µs for the compiled kernel's own ``run``.
At 256 px that is more than the kernels take.

Triton specialises a kernel on the arguments' types, on ints being 1, multiples of 16 or outside int32, and on
pointers being 16-byte aligned. ``CachedLaunch`` keys its cache on exactly those classes of the arguments, so a
call reuses a compiled kernel only where Triton would have picked the same one; the first call of each key goes
through Triton (compiling if needed). Tensor arguments are then passed as raw device pointers.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from ...buffers import current_stream
from ...notices import warn_once
from ...tiles import LaunchTables

_COMPILED_API = ("run", "function", "packed_metadata")


def descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """Rank-4 TMA descriptor over a (B, H, L, D) tensor, blocks of (1, 1, rows, D).

    ``t`` must be TMA-readable (``buffers.tma_ready``); the checks of TensorDescriptor's constructor are skipped
    (3 µs of the 5 a descriptor costs): tma_ready made them, and the block shapes come from our configs."""
    strides = kernel_strides(t)
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(base=t, shape=list(t.shape), strides=strides, block_shape=[1, 1, rows, t.shape[-1]])
    return desc


def kernel_strides(t: torch.Tensor) -> list[int]:
    """The strides a descriptor over t carries: a size-1 dimension, which no index steps along, gets the innermost
    size (a stride TMA accepts), the innermost dimension 1. The rule of csrc/tensor_rules.h's kernel_stride, which
    the extension applies (tests/test_tensor_rules.py holds the two together)."""
    strides = [st if n > 1 else t.shape[-1] for n, st in zip(t.shape, t.stride())]
    strides[-1] = 1
    return strides


def _hook_set(hook) -> bool:
    # Triton >= 3.5 keeps the hooks in (possibly empty) HookChain objects; older versions use None.
    return hook is not None and bool(getattr(hook, "calls", True))


def launch_hooks_set() -> bool:
    """Whether a launch hook (e.g. a profiler) is installed: then every launch goes through Triton, which
    builds the hooks' metadata."""
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    return runtime is not None and (_hook_set(runtime.launch_enter_hook) or _hook_set(runtime.launch_exit_hook))


class CachedLaunch:
    """``fn`` launched as ``launch(grid, args, tables, constexprs, num_warps, num_stages)``.

    The kernel's parameters must be, in order: ``args`` (TensorDescriptors over CUDA tensors, CUDA tensors,
    ints, floats), the tensors of ``tables`` (a schedule.LaunchTables or None), then its constexprs, whose values
    ``constexprs`` gives in order.
    """

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict = {}

    def __call__(self, grid: tuple[int, int, int], args: list, tables: LaunchTables | None, constexprs: tuple,
                 num_warps: int, num_stages: int):
        key, run_args, device = self._specialise(args, constexprs, num_warps, num_stages)
        kernel = self.compiled.get(key)
        table_tensors = tables.tensors if tables is not None else ()
        if kernel is None or launch_hooks_set():
            kernel = self.fn[grid](*args, *table_tensors, *constexprs, num_warps=num_warps, num_stages=num_stages)
            if all(hasattr(kernel, name) for name in _COMPILED_API):
                self.compiled[key] = kernel
            elif kernel is not None:  # None: the interpreter ran it
                warn_once(f"triton {triton.__version__}: compiled kernels lack {_COMPILED_API}; every launch "
                          "goes through kernel[grid] (~30 µs more host time per launch)")
            return
        kernel.run(grid[0], grid[1], grid[2], current_stream(device), kernel.function, kernel.packed_metadata,
                   None, None, None, *run_args, *(tables.pointers if tables is not None else ()), *constexprs)

    def compiled_kernel(self, args: list, constexprs: tuple, num_warps: int, num_stages: int):
        """The compiled kernel a launch with these arguments runs, or None before the first such launch."""
        return self.compiled.get(self._specialise(args, constexprs, num_warps, num_stages)[0])

    @staticmethod
    def _specialise(args: list, constexprs: tuple, num_warps: int, num_stages: int):
        """(cache key, arguments for the compiled kernel's run, device index) in one pass over ``args``."""
        key, run_args, device = [constexprs, num_warps, num_stages], [], None
        for a in args:
            kind = type(a)
            if kind is torch.Tensor:
                pointer = a.data_ptr()
                key.append((a.dtype, pointer % 16 == 0))
                run_args.append(pointer)
                device = a.get_device()
            elif kind is int:
                key.append((a == 1, a % 16 == 0, -2**31 <= a < 2**31))
                run_args.append(a)
            elif kind is TensorDescriptor:
                key.append(a.base.dtype)
                run_args.append(a)
                device = a.base.get_device()
            else:
                key.append(kind)
                run_args.append(a)
        key.append(device)
        return tuple(key), run_args, device


class KernelLaunch(NamedTuple):
    """One kernel's launch as a plan fixes it (plan.LaunchPlan); the arguments come per call. ``run(args)``
    launches it from Python; the C++ launcher (native.py) reads the same launch to build its parameter codes."""
    launcher: CachedLaunch
    grid: tuple[int, int, int]
    tables: LaunchTables | None
    constexprs: tuple
    num_warps: int
    num_stages: int
    config: Any = None  # the tuning config it was built from (block sizes), if any

    def run(self, args: list):
        self.launcher(self.grid, args, self.tables, self.constexprs, self.num_warps, self.num_stages)

    def compiled_kernel(self, args: list):
        """The compiled kernel a launch with ``args`` runs (None before such a launch first ran)."""
        return self.launcher.compiled_kernel(args, self.constexprs, self.num_warps, self.num_stages)
