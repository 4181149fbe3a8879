"""torch.library registration of our kernel backends ("triton", "cuda", "cuda_sm80").

One forward and one backward op, so that ``torch.compile(fullgraph=True)`` traces through the attention with no
graph break (the fake implementations give output shapes) and autograd wires the backward by name. Both ops
look up the launch plan of their arguments (plan.py) and run it with the backend's module:
``run_forward(plan, q, k, v) -> (out, lse)`` and ``run_backward(plan, dout, q, k, v, out, lse) -> (dq, dk, dv)``.

We register with ``custom_op`` rather than ``triton_op``: one schema serves both the Triton and the CUDA kernels,
and the Triton kernels also run on CPU tensors under TRITON_INTERPRET=1, which Inductor's Triton path cannot.

Eager calls go through ``_EagerAttention`` (a plain autograd.Function running the same plan) instead:
the custom-op machinery costs ~250 µs of Python per forward + backward against ~90 µs (no-op backend, CPU), and
at 256 px the host, not the GPU, bounds the step. Eager calls on CUDA go further where the extension is built: a
C++ autograd Function launches the plan's kernels (backends/native.py). ``attention_op`` picks one of the two.
"""
from __future__ import annotations

import functools
import importlib
from typing import Sequence

import torch

from .options import current_options, using_options
from .plan import launch_plan

_BACKEND_MODULES = {"triton": "hmar_kernels.backends.triton.host", "cuda": "hmar_kernels.backends.cuda",
                    "cuda_sm80": "hmar_kernels.backends.cuda_sm80"}


@functools.lru_cache(maxsize=None)
def backend_module(name: str):
    """The module of a kernel backend (imported on first use, then one cache lookup per call)."""
    return importlib.import_module(_BACKEND_MODULES[name])


@torch.library.custom_op("hmar_kernels::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch_nums: Sequence[int],
                      row_bits: Sequence[int], softmax_scale: float, backend: str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, L, D) q, k, v → out (B, H, L, D), lse (B, H, L) fp32 (natural log)."""
    plan = launch_plan(backend, tuple(patch_nums), tuple(row_bits), softmax_scale, q)
    return backend_module(backend).run_forward(plan, q, k, v)


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, patch_nums, row_bits, softmax_scale, backend):
    B, H, L, D = q.shape
    return q.new_empty((B, H, L, D)), q.new_empty((B, H, L), dtype=torch.float32)


@torch.library.custom_op("hmar_kernels::attention_backward", mutates_args=())
def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, patch_nums: Sequence[int], row_bits: Sequence[int],
                       softmax_scale: float, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of attention_forward's out, given dout (B, H, L, D)."""
    plan = launch_plan(backend, tuple(patch_nums), tuple(row_bits), softmax_scale, q)
    return backend_module(backend).run_backward(plan, dout, q, k, v, out, lse)


@attention_backward.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, patch_nums, row_bits, softmax_scale, backend):
    # The kernels return fresh contiguous gradients whatever the inputs' strides.
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, patch_nums, row_bits, softmax_scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the unused lse output (7 ms per call on CPU)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.patch_nums, ctx.row_bits, ctx.softmax_scale, ctx.backend = patch_nums, row_bits, softmax_scale, backend
    ctx.options = current_options()  # the engine thread runs the backward with the forward's options


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    with using_options(ctx.options):
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, ctx.patch_nums, ctx.row_bits, ctx.softmax_scale,
                                        ctx.backend)
    return dq, dk, dv, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward/backward as the custom ops, with autograd.Function's lower per-call overhead."""

    @staticmethod
    def forward(ctx, q, k, v, plan):
        out, lse = backend_module(plan.backend).run_forward(plan, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        plan = ctx.plan
        with using_options(plan.options):  # the engine thread runs the backward with the forward's options
            dq, dk, dv = backend_module(plan.backend).run_backward(plan, dout, q, k, v, out, lse)
        return dq, dk, dv, None


def attention_op(q, k, v, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float,
                 backend: str) -> torch.Tensor:
    """out (B, H, L, D) of a kernel backend: the custom op under torch.compile; in eager, one autograd Function
    running the arguments' launch plan: the C++ one (kernels launched from C++, native.py) where the extension has
    it, else _EagerAttention."""
    if torch.compiler.is_compiling():
        return attention_forward(q, k, v, patch_nums, row_bits, softmax_scale, backend)[0]
    plan = launch_plan(backend, patch_nums, row_bits, softmax_scale, q)
    native_id = native().plan_id(plan, q, k, v)
    if native_id is not None:
        return native().attention(q, k, v, native_id)
    return _EagerAttention.apply(q, k, v, plan)


@functools.lru_cache(maxsize=1)
def native():
    """hmar_kernels.backends.native (imported on first use: it imports Triton)."""
    return importlib.import_module("hmar_kernels.backends.native")
