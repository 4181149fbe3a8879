"""The kernel backends ("triton", "cuda", "cuda_sm80") under a C++ autograd Function (csrc/native_attention.cpp).

Why: with autograd, a Python Function's backward runs in the autograd engine's device thread, and there the same
Python launch code ran ~2× slower than on the calling thread (bench/engine_timeline.py, H100 host, 256 px:
fwd+bwd 540 µs of host time with threads, 352 µs with ``torch.autograd.set_multithreading_enabled(False)``; SDPA
229 µs either way). Here the kernels Triton compiled are launched from C++ in both passes (for "cuda" and
"cuda_sm80", the CUDA forward and backward are called from C++): no Python runs in the backward at all.

Each launch plan (plan.LaunchPlan: one per backend, schedule, pattern, scale, shape, dtype, device and kernel
options) is registered once: the Python launcher runs the plan's forward and backward on scratch tensors (which
compiles, autotunes and fills the plan's Triton launches), then each of those launches' compiled kernel and
parameter list (read from Triton's signature) is turned into ParamCodes (csrc/triton_launch.h) that say where every
parameter's value comes from, and the plan is registered as one PlanSpec (csrc/native_attention.h), which the
extension checks against the cubins' parameter sizes. For the CUDA backends the PlanSpec holds the plan's own
CudaForward and CudaBackward structs (the Triton backward's launches instead under
``KernelOptions(cuda_backward="triton")``). Registered plans live as long as the process.
"""
from __future__ import annotations

import functools
import struct

import torch

from . import cuda
from ..buffers import tma_ready
from ..notices import warn_once
from ..plan import NOT_BUILT, LaunchPlan
from .triton import host
from .triton.cached_launch import KernelLaunch, launch_hooks_set

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


def param_codes(kernel, launch: KernelLaunch, args: list, slots: dict) -> list[list[int]]:
    """One code per parameter of the compiled ``kernel`` that ``launch`` runs with ``args``; ``slots`` maps
    id(tensor) → slot."""
    values = [*args, *(launch.tables.tensors if launch.tables is not None else ()), *launch.constexprs]
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


def kernel_spec(ext, launch: KernelLaunch, args: list, slots: dict) -> object:
    """The extension's TritonKernelSpec of ``launch`` with ``args`` (function, launch shape, parameter codes),
    refusing what the C++ launcher omits."""
    kernel = launch.compiled_kernel(args)
    if kernel is None:
        raise Unsupported(f"{launch.launcher.fn.__name__} has no compiled kernel for these arguments")
    meta = kernel.metadata
    for name, allowed in (("num_ctas", 1), ("global_scratch_size", 0), ("profile_scratch_size", 0),
                          ("launch_cooperative_grid", False), ("launch_pdl", False)):
        if getattr(meta, name, allowed) != allowed:
            raise Unsupported(f"{kernel.name}: {name} = {getattr(meta, name)}")
    spec = ext.TritonKernelSpec()
    spec.function, spec.threads, spec.shared_bytes = int(kernel.function), 32 * meta.num_warps, meta.shared
    spec.grid, spec.codes = list(launch.grid), param_codes(kernel, launch, args, slots)
    return spec


def _build(plan: LaunchPlan, q, k, v) -> int:
    """Registers ``plan`` with the extension; its id. Its Triton launches are first run from Python on scratch
    tensors (compiling and autotuning them into the plan), then registered as they ran; its CUDA structs need no
    run."""
    ext, why = _extension()
    if ext is None:
        raise Unsupported(why)
    q, k, v = (tma_ready(t.detach()) for t in (q, k, v))
    spec = ext.PlanSpec()
    spec.like, spec.poison = q, plan.options.poison_outputs
    triton_backward = plan.options.cuda_backward == "triton" or plan.backend not in cuda.ARCHS
    if plan.backend in cuda.ARCHS:
        spec.cuda_forward = cuda.forward_setup(plan)
        if not triton_backward:
            spec.cuda_backward = cuda.backward_setup(plan)
            return ext.register_plan(spec)
    out, lse = cuda.run_forward(plan, q, k, v) if plan.backend in cuda.ARCHS else host.run_forward(plan, q, k, v)
    dout = torch.zeros_like(out)
    dq, dk, dv = host.run_backward(plan, dout, q, k, v, out, lse)
    delta = torch.empty_like(lse)
    named = dict(q=q, k=k, v=v, out=out, lse=lse, dout=dout, delta=delta, dq=dq, dk=dk, dv=dv)
    slots = {id(named[name]): slot for slot, name in enumerate(SLOTS)}
    preprocess, backward = plan.triton_preprocess, plan.triton_backward
    spec.preprocess = kernel_spec(ext, preprocess, host.preprocess_args(out, dout, delta), slots)
    spec.backward = kernel_spec(ext, backward, host.backward_args(backward, dout, q, k, v, lse, delta, dq, dk, dv,
                                                                  plan.softmax_scale), slots)
    launches = [preprocess, backward]
    if plan.backend not in cuda.ARCHS:
        forward = plan.triton_forward
        spec.triton_forward = kernel_spec(ext, forward, host.forward_args(forward, q, k, v, out, lse,
                                                                          plan.softmax_scale), slots)
        launches.append(forward)
    spec.tables = [t for launch in launches if launch.tables is not None for t in launch.tables.tensors]
    return ext.register_plan(spec)


def plan_id(plan: LaunchPlan, q, k, v) -> int | None:
    """The id of ``plan`` registered with the C++ autograd Function (registered on first use), or None where the
    Python path must run (CPU, launch hooks set, a CUDA graph capture before the plan is registered, no extension
    or an unsupported Triton: said once)."""
    native = plan.native
    if native is NOT_BUILT:
        if q.device.type != "cuda" or q.numel() == 0:  # fixed by the plan's key
            plan.native = None
            return None
        if torch.cuda.is_current_stream_capturing():
            return None  # registering runs and times kernels: not inside a capture
        try:
            native = _build(plan, q, k, v)
        except (Unsupported, ValueError) as error:
            native = None
            warn_once(f"backend {plan.backend!r}: kernels launched from Python, because {error}; the backward then "
                      "runs Python in the autograd engine's thread (~200 µs more host time per fwd+bwd at 256 px)")
        plan.native = native
    if native is not None and launch_hooks_set():
        return None  # a profiler's launch hooks see only launches that go through Triton
    return native


def attention(q, k, v, plan: int) -> torch.Tensor:
    """out (B, H, L, D) of plan ``plan``; differentiable in q, k, v."""
    return _native_attention()(q, k, v, plan)


@functools.lru_cache(maxsize=1)
def _native_attention():
    return _extension()[0].native_attention
