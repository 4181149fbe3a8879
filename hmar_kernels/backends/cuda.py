"""The hand-written CUDA backend (csrc/): an sm90a (Hopper) block-sparse forward; the backward is, until the CUDA
backward lands, the Triton backward fed with this forward's LSE.

The extension is ``hmar_kernels._C`` when setup.py built it (``pip install --no-build-isolation -e .`` with a CUDA
torch and nvcc). Where pip cannot build, set HMAR_CUDA_JIT=1: the first use compiles csrc/ with
torch.utils.cpp_extension.load (cached; about a minute on 16 cores) from a source checkout.

Host path per call: cached TileMask and program table, a few tensor checks, one kernel launch; no host syncs,
no Python loop over scales.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from ..buffers import current_stream, new_output, tma_ready
from ..options import current_options
from ..resident import resident
from ..tiles import FORWARD_TABLES, forward_tables

JIT_ENV = "HMAR_CUDA_JIT"
KERNEL_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


@functools.lru_cache(maxsize=1)
def _extension():
    """(module, None) when the extension is available, else (None, why not)."""
    try:
        return importlib.import_module("hmar_kernels._C"), None  # built by setup.py with a CUDA torch and nvcc
    except ImportError as error:
        not_built = error
    if os.environ.get(JIT_ENV, "0") == "1":
        try:
            from .. import _build
            return _build.load_jit(verbose=os.environ.get("HMAR_CUDA_JIT_VERBOSE", "0") == "1"), None
        except Exception as error:  # a failed compile must not break the other backends: report it instead
            return None, f"the JIT build of the CUDA extension failed ({type(error).__name__}: {error})"
    return None, (f"the CUDA extension hmar_kernels._C is not built ({not_built}); build it with "
                  f"`pip install --no-build-isolation -e .` on a machine with nvcc and a CUDA torch, or set "
                  f"{JIT_ENV}=1 to compile it on first use")


def module():
    """The compiled extension (raises RuntimeError saying why it is unavailable)."""
    ext, why = _extension()
    if ext is None:
        raise RuntimeError(why)
    return ext


@functools.lru_cache(maxsize=None)
def _built() -> dict:
    return dict(module().built())


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def problem(device, dtype, head_dim) -> str | None:
    """Why backend 'cuda' cannot run on such inputs, or None."""
    if device.type != "cuda":
        return f"backend 'cuda' needs CUDA tensors (q is on {device})"
    ext, why = _extension()
    if ext is None:
        return why
    major, minor = _capability(device)
    if (major, minor) != (9, 0):
        return f"backend 'cuda' needs an sm90 (Hopper) GPU; {device} is sm{major}{minor} (sm80 comes with part 2)"
    built = _built()
    name = KERNEL_DTYPES.get(dtype)
    if name is None:
        return f"backend 'cuda' supports dtypes bf16 and fp16, got {dtype}"
    if name not in built["dtypes"]:
        return f"backend 'cuda': {name} kernels were not built (dev build; see HMAR_CUDA_DEV_BUILD)"
    if head_dim not in built["head_dims"]:
        return f"backend 'cuda' supports head dims {tuple(built['head_dims'])} in this build, got D = {head_dim}"
    return None


@functools.lru_cache(maxsize=None)
def fwd_tile(head_dim: int, config: int) -> tuple[int, int]:
    """(block_m, block_n) of the forward kernel (csrc/tile_size.h): the TileMask is built with it."""
    return tuple(module().fwd_tile(head_dim, config))


_counters: dict = {}


def _scheduler_counter(device: torch.device, stream: int):
    """Two zeroed int32 for the dynamic scheduler, one pair per (device, stream) so that concurrent launches never
    share one (the kernel leaves them zero). None while a CUDA graph is being captured and none exists yet: the
    capture then uses static striding rather than allocating inside the graph."""
    key = (device, stream)
    counter = _counters.get(key)
    if counter is None:
        if torch.cuda.is_current_stream_capturing():
            return None
        counter = _counters[key] = resident(lambda: torch.zeros(2, dtype=torch.int32, device=device), device)
    return counter


def launch_setup(patch_nums, row_bits, shape, device, softmax_scale: float):
    """What a forward launch reads besides its tensors, under the current kernel options, as the extension's
    CudaForward struct (csrc/api.h): packed tile tables, softmax scale, tile config, grid size (0: one CTA per SM),
    whether it schedules dynamically. Built once per arguments; the C++ path (native.py) registers the same one."""
    options = current_options()
    return _launch_setup(patch_nums, row_bits, tuple(shape), device, softmax_scale, options.cuda_fwd_config,
                         options.cuda_scheduler)


@functools.lru_cache(maxsize=256)
def _launch_setup(patch_nums, row_bits, shape, device, softmax_scale, config, scheduler):
    ext = module()
    B, H, L, D = shape
    tables = forward_tables(patch_nums, row_bits, *fwd_tile(D, config), B * H, device)
    packed = ext.TileTables()
    packed.buffer = tables.buffer
    for name in FORWARD_TABLES:
        setattr(packed, name, tables.offsets[name])
    packed.length, packed.row_tiles = tables.sizes["row_lo"], tables.sizes["row_start"]
    packed.visits, packed.num_programs = tables.sizes["col_start"], tables.programs
    args = ext.CudaForward()
    args.tables, args.softmax_scale, args.config = packed, softmax_scale, config
    args.num_ctas = tables.programs if scheduler == "grid" else 0
    args.dynamic = scheduler == "dynamic"
    return args


def forward(q, k, v, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float):
    """q, k, v: (B, H, L, D) bf16/fp16 on an sm90 GPU → out (B, H, L, D) in q's dtype, lse (B, H, L) fp32
    (natural log; -inf for rows that see no key)."""
    ext = module()
    q, k, v = (tma_ready(t) for t in (q, k, v))
    B, H, L, D = q.shape
    args = launch_setup(patch_nums, row_bits, q.shape, q.device, softmax_scale)
    out = new_output((B, H, L, D), q.dtype, q.device)
    lse = new_output((B, H, L), torch.float32, q.device)
    stream = current_stream(q.device.index)
    counter = _scheduler_counter(q.device, stream) if args.dynamic else None
    ext.fwd(q, k, v, out, lse, args, counter, stream)
    return out, lse


def backward(dout, q, k, v, out, lse, patch_nums: tuple[int, ...], row_bits: tuple[int, ...],
             softmax_scale: float):
    """(dq, dk, dv): the Triton backward with this forward's LSE (same units), until the CUDA backward lands."""
    from .triton import host as launch

    return launch.backward(dout, q, k, v, out, lse, patch_nums, row_bits, softmax_scale)
