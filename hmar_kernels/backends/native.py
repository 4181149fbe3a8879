"""The kernel backends ("triton", "cuda", "cuda_sm80") under a C++ autograd Function (csrc/native_attention.cpp).

Why: with autograd, a Python Function's backward runs in the autograd engine's device thread, and there the same
Python launch code ran ~2× slower than on the calling thread (bench/engine_timeline.py, H100 host, 256 px:
fwd+bwd 540 µs of host time with threads, 352 µs with ``torch.autograd.set_multithreading_enabled(False)``; SDPA
229 µs either way). Here the kernels Triton compiled are launched from C++ in both passes (for "cuda" and
"cuda_sm80", the CUDA forward and backward are called from C++): no Python runs in the backward at all.

A plan is built once per (backend, schedule, pattern, scale, shape, dtype, device, kernel options): the Python
path runs one forward and backward (compiling and autotuning as usual), then each compiled Triton kernel's
parameter list (read from Triton's signature) is turned into ParamCodes (csrc/triton_launch.h) that say where
every parameter's value comes from, and the kernels are registered as one PlanSpec (csrc/native_attention.h),
which the extension checks against the cubins' parameter sizes; for the CUDA backends the PlanSpec holds the same
CudaForward and CudaBackward structs (packed tile tables and launch settings) that cuda.forward / cuda.backward
pass (the Triton backward's kernels instead under ``KernelOptions(cuda_backward="triton")``). Plans live as long as the
process (a few hundred bytes each, plus the tile tables they keep).
"""
from __future__ import annotations

import functools
import struct

import torch

from . import cuda
from ..buffers import tma_ready
from ..notices import warn_once
from ..options import current_options
from .triton import host as launch
from .triton.cached_launch import KernelCall, launch_hooks_set

CUDA_ARCHS = {"cuda": 90, "cuda_sm80": 80}  # the CUDA backends and the arch of their kernels
# The tensors a plan's kernels read, in csrc/triton_launch.h's Slot order.
SLOTS = ("q", "k", "v", "out", "lse", "dout", "delta", "dq", "dk", "dv")
TENSOR_POINTER, POINTER, INT32, INT64, FLOAT32, TENSOR_MAP, SHAPE, STRIDE = range(8)
# Triton's device-side TMA element types differ from the driver's for these three (its driver maps them the same).
_TMA_HOST_TYPE = {8: 10, 9: 8, 10: 9}


class Unsupported(Exception):
    """This Triton or kernel cannot be launched from C++; the message says why."""


def _extension():
    ext, why = cuda._extension()
    if ext is not None and not hasattr(ext, "PlanSpec"):
        return None, "the built CUDA extension predates the C++ launcher's PlanSpec; rebuild it"
    return ext, why


def param_codes(kernel, call: KernelCall, slots: dict) -> list[list[int]]:
    """One code per parameter of the compiled ``kernel`` run by ``call``; ``slots`` maps id(tensor) → slot."""
    values = [*call.args, *(call.tables.tensors if call.tables is not None else ()), *call.constexprs]
    signature = list(kernel.src.signature.values())
    if len(values) != len(signature):
        raise Unsupported(f"{kernel.name}: {len(signature)} parameters in the signature, {len(values)} values")
    metas = list(getattr(kernel.metadata, "tensordesc_meta", None) or ())
    codes = []
    for kind, value in zip(signature, values):
        if kind == "constexpr":  # constexprs and arguments Triton specialised away (ints equal to 1)
            continue
        if isinstance(kind, str) and kind.startswith("tensordesc"):
            if not metas:
                raise Unsupported(f"{kernel.name}: a tensor descriptor was not lowered to TMA")
            meta = metas.pop(0)
            if meta.get("fp4_padded") or meta.get("is_im2col"):
                raise Unsupported(f"{kernel.name}: unsupported descriptor {meta}")
            slot = slots[id(value.base)]
            rank = len(value.shape)
            codes.append([TENSOR_MAP, slot, int(meta["swizzle"]),
                          _TMA_HOST_TYPE.get(int(meta["elem_type"]), int(meta["elem_type"])),
                          *(int(b) for b in meta["block_size"])])
            codes += [[SHAPE, slot, d] for d in range(rank)] + [[STRIDE, slot, d] for d in range(rank)]
        elif isinstance(kind, str) and kind.startswith("*"):
            codes.append([TENSOR_POINTER, slots[id(value)]] if id(value) in slots else [POINTER, value.data_ptr()])
        elif kind == "i32":
            codes.append([INT32, int(value)])
        elif kind == "i64":
            codes.append([INT64, int(value)])
        elif kind == "fp32":
            codes.append([FLOAT32, struct.unpack("<I", struct.pack("<f", value))[0]])
        else:
            raise Unsupported(f"{kernel.name}: parameter type {kind!r}")
    return codes + [[POINTER, 0], [POINTER, 0]]  # global and profile scratch: none


def kernel_spec(ext, kernel, call: KernelCall, codes: list) -> object:
    """The extension's TritonKernelSpec of a compiled kernel (function, launch shape, parameter codes), refusing
    what the C++ launcher omits."""
    meta = kernel.metadata
    for name, allowed in (("num_ctas", 1), ("global_scratch_size", 0), ("profile_scratch_size", 0),
                          ("launch_cooperative_grid", False), ("launch_pdl", False)):
        if getattr(meta, name, allowed) != allowed:
            raise Unsupported(f"{kernel.name}: {name} = {getattr(meta, name)}")
    spec = ext.TritonKernelSpec()
    spec.function, spec.threads, spec.shared_bytes = int(kernel.function), 32 * meta.num_warps, meta.shared
    spec.grid, spec.codes = list(call.grid), codes
    return spec


def _build(backend, q, k, v, patch_nums, row_bits, softmax_scale) -> int:
    """Runs the Python path once on these inputs (compiling, autotuning), then registers the kernels it ran
    with the extension; the plan id. The CUDA kernels need no run: their launch structs are registered."""
    ext, why = _extension()
    if ext is None:
        raise Unsupported(why)
    q, k, v = (tma_ready(t.detach()) for t in (q, k, v))
    arch = CUDA_ARCHS.get(backend)
    plan = ext.PlanSpec()
    if arch is not None:  # the CUDA forward's arguments: the very struct cuda.forward passes
        plan.cuda_forward = cuda.launch_setup(patch_nums, row_bits, q.shape, q.device, softmax_scale, arch)
        if current_options().cuda_backward == "cuda":
            plan.cuda_backward = cuda.backward_setup(patch_nums, row_bits, q.shape, q.device, softmax_scale, arch)
            plan.like, plan.poison = q, current_options().poison_outputs
            return ext.register_plan(plan)
        out, lse = cuda.forward(q, k, v, patch_nums, row_bits, softmax_scale, arch)
    else:
        out, lse = launch.forward(q, k, v, patch_nums, row_bits, softmax_scale)
    dout = torch.zeros_like(out)
    delta = torch.empty_like(lse)
    dq, dk, dv = launch.backward(dout, q, k, v, out, lse, patch_nums, row_bits, softmax_scale)
    named = dict(q=q, k=k, v=v, out=out, lse=lse, dout=dout, delta=delta, dq=dq, dk=dk, dv=dv)
    slots = {id(named[name]): slot for slot, name in enumerate(SLOTS)}

    def spec_of(call: KernelCall):
        kernel = call.compiled_kernel()
        if kernel is None:
            raise Unsupported(f"{call.launcher.fn.__name__} has no compiled kernel for these arguments")
        return kernel_spec(ext, kernel, call, param_codes(kernel, call, slots))

    calls = [launch.preprocess_call(out, dout, delta),
             launch.bwd_call(launch.bwd_config(dout, q, k, v, lse, delta, dq, dk, dv, patch_nums, row_bits,
                                               softmax_scale),
                             dout, q, k, v, lse, delta, dq, dk, dv, patch_nums, row_bits, softmax_scale)]
    plan.preprocess, plan.backward = spec_of(calls[0]), spec_of(calls[1])
    if arch is None:
        calls.append(launch.fwd_call(launch.fwd_config(q, k, v, out, lse, patch_nums, row_bits, softmax_scale),
                                     q, k, v, out, lse, patch_nums, row_bits, softmax_scale))
        plan.triton_forward = spec_of(calls[-1])
    plan.tables = [t for call in calls if call.tables is not None for t in call.tables.tensors]
    plan.like, plan.poison = q, current_options().poison_outputs
    return ext.register_plan(plan)


_plans: dict = {}


def plan_id(backend: str, q, k, v, patch_nums: tuple[int, ...], row_bits: tuple[int, ...],
            softmax_scale: float) -> int | None:
    """The C++ plan for these inputs (built on first use), or None where the Python path must run (CPU, launch
    hooks set, a CUDA graph capture before the plan exists, no extension or an unsupported Triton: said once)."""
    if q.device.type != "cuda" or q.numel() == 0:
        return None
    key = (backend, patch_nums, row_bits, softmax_scale, q.shape, q.dtype, q.device, current_options())
    plan = _plans.get(key, False)
    if plan is False:
        if torch.cuda.is_current_stream_capturing():
            return None  # building runs and times kernels: not inside a capture
        try:
            plan = _build(backend, q, k, v, patch_nums, row_bits, softmax_scale)
        except (Unsupported, ValueError) as error:
            plan = None
            warn_once(f"backend {backend!r}: kernels launched from Python, because {error}; the backward then "
                       "runs Python in the autograd engine's thread (~200 µs more host time per fwd+bwd at 256 px)")
        _plans[key] = plan
    if plan is not None and launch_hooks_set():
        return None  # a profiler's launch hooks see only launches that go through Triton
    return plan


def attention(q, k, v, plan: int) -> torch.Tensor:
    """out (B, H, L, D) of plan ``plan``; differentiable in q, k, v."""
    return _native_attention()(q, k, v, plan)


@functools.lru_cache(maxsize=1)
def _native_attention():
    return _extension()[0].native_attention
