"""One launch plan per key: everything a kernel backend's launches read besides the tensors, built once.

A key is (backend, schedule, pattern, softmax scale, shape, dtype, device, kernel options). Its ``LaunchPlan``
holds, filled in by the backend on the first call of each pass (the Triton configs are autotuned then, with that
call's tensors):

* ``triton_forward``, ``triton_preprocess``, ``triton_backward``: the Triton kernels' launches (grid, packed tile
  tables, constexprs, warps, stages: ``backends.triton.cached_launch.KernelLaunch``);
* ``cuda_forward``, ``cuda_backward``: the CUDA kernels' arguments, as the extension's CudaForward and CudaBackward
  structs (packed tile tables, scale, config, scheduling, arch);
* ``native``: the id of the same plan registered with the C++ autograd Function (``backends.native``), once built.

The Python launchers (``backends.triton.host``, ``backends.cuda``) run a plan; ``backends.native`` registers the
very same launches with the extension. Every per-call path looks the plan up once.
"""
from __future__ import annotations

import torch

from .notices import warn_once
from .options import KernelOptions, current_options

NOT_BUILT = False  # LaunchPlan.native before the C++ plan was tried (None: it cannot be built)


class LaunchPlan:
    __slots__ = ("backend", "patch_nums", "row_bits", "softmax_scale", "shape", "dtype", "device", "options",
                 "triton_forward", "triton_preprocess", "triton_backward", "cuda_forward", "cuda_backward", "native")

    def __init__(self, backend: str, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float,
                 shape: torch.Size, dtype: torch.dtype, device: torch.device, options: KernelOptions):
        self.backend, self.patch_nums, self.row_bits, self.softmax_scale = backend, patch_nums, row_bits, softmax_scale
        self.shape, self.dtype, self.device, self.options = shape, dtype, device, options  # shape: (B, H, L, D)
        self.triton_forward = self.triton_preprocess = self.triton_backward = None
        self.cuda_forward = self.cuda_backward = None
        self.native = NOT_BUILT

    def __repr__(self) -> str:
        return (f"LaunchPlan({self.backend!r}, patch_nums={self.patch_nums}, row_bits={self.row_bits}, "
                f"scale={self.softmax_scale}, shape={tuple(self.shape)}, {self.dtype}, {self.device})")


_plans: dict = {}
# Plans are never dropped: a captured CUDA graph keeps launching a plan's device tables, and the C++ autograd
# Function keeps its registered copy. Past this many keys the calls almost certainly vary a shape every time.
MANY_PLANS = 512


def launch_plan(backend: str, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float,
                q: torch.Tensor) -> LaunchPlan:
    """The plan of ``backend`` for inputs like q (B, H, L, D) under the current kernel options (made on first use;
    plans live as long as the process: a one-time warning when there are ``MANY_PLANS`` of them)."""
    key = (backend, patch_nums, row_bits, softmax_scale, q.shape, q.dtype, q.device, current_options())
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = LaunchPlan(*key)
        if len(_plans) == MANY_PLANS:
            warn_once(f"hmar_kernels: {MANY_PLANS} launch plans built in this process, one per distinct (backend, "
                      f"schedule, mask, scale, shape, dtype, device, options); plans are kept for the process's "
                      f"life (captured CUDA graphs use them), so calls whose shapes keep changing (e.g. every "
                      f"batch size) grow memory and pay each new plan's set-up: pad to a few fixed shapes")
    return plan
