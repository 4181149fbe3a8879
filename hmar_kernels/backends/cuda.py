"""The hand-written CUDA kernels (csrc/): backend "cuda" runs the sm90a (Hopper: wgmma, TMA) forward and fused
backward, backend "cuda_sm80" (backends/cuda_sm80.py) the sm80 ones (mma.sync, cp.async: A100-class GPUs, and
Hopper too). ``arch`` (90 or 80) picks them below. ``KernelOptions(cuda_backward="triton")`` swaps in the Triton
backward (fed with this forward's LSE) for comparison.

The extension is ``hmar_kernels._C`` when setup.py built it (``pip install --no-build-isolation -e .`` with a CUDA
torch and nvcc). Where pip cannot build, set HMAR_CUDA_JIT=1: the first use compiles csrc/ with
torch.utils.cpp_extension.load (cached; about a minute on 16 cores) from a source checkout.

Host path per call: the launch plan's CudaForward / CudaBackward structs (plan.LaunchPlan, built once per key), a
few tensor checks, the launches; no host syncs, no Python loop over scales.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from ..buffers import current_stream, new_output, tma_ready
from ..plan import LaunchPlan, launch_plan
from ..tiles import backward_tables, forward_tables, transpose_bits

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


NAMES = {90: "cuda", 80: "cuda_sm80"}  # backend name of each arch
ARCHS = {name: arch for arch, name in NAMES.items()}


def problem(device, dtype, head_dim, arch: int = 90) -> str | None:
    """Why the backend of ``arch`` ('cuda': 90, 'cuda_sm80': 80) cannot run on such inputs, or None."""
    name = NAMES[arch]
    if device.type != "cuda":
        return f"backend {name!r} needs CUDA tensors (q is on {device})"
    ext, why = _extension()
    if ext is None:
        return why
    major, minor = _capability(device)
    if arch == 90 and (major, minor) != (9, 0):
        return f"backend 'cuda' needs an sm90 (Hopper) GPU; {device} is sm{major}{minor} (use 'cuda_sm80' there)"
    if arch == 80 and major < 8:
        return f"backend 'cuda_sm80' needs an sm80 or later GPU; {device} is sm{major}{minor}"
    if not hasattr(ext, "bwd"):
        return "the built CUDA extension predates the CUDA backward and the sm80 kernels; rebuild it"
    built = _built()
    kernel_dtype = KERNEL_DTYPES.get(dtype)
    if kernel_dtype is None:
        return f"backend {name!r} supports dtypes bf16 and fp16, got {dtype}"
    if kernel_dtype not in built["dtypes"]:
        return f"backend {name!r}: {kernel_dtype} kernels were not built (dev build; see HMAR_CUDA_DEV_BUILD)"
    if head_dim not in built["head_dims"]:
        return f"backend {name!r} supports head dims {tuple(built['head_dims'])} in this build, got D = {head_dim}"
    return None


@functools.lru_cache(maxsize=None)
def fwd_tile(head_dim: int, config: int, arch: int = 90) -> tuple[int, int]:
    """(block_m, block_n) of the forward kernel (csrc/tile_size.h, tile_size_sm80.h): the TileMask is built with
    it."""
    if arch == 80:
        return tuple(module().sm80_tiles(head_dim))[:2]
    return tuple(module().fwd_tile(head_dim, config))


@functools.lru_cache(maxsize=None)
def bwd_tile(head_dim: int, config: int, arch: int = 90) -> tuple[int, int]:
    """(rows, cols) of the backward's TileMasks (rows: the side a CTA owns, keys for dK/dV)."""
    if arch == 80:
        return tuple(module().sm80_tiles(head_dim))[2:]
    return tuple(module().bwd_tile(head_dim, config))[:2]


def _packed(ext, tables, length: int):
    """The extension's TileTables (csrc/api.h) of a packed LaunchTables: its buffer and each table's offset."""
    packed = ext.TileTables()
    packed.buffer = tables.buffer
    for name, offset in tables.offsets.items():
        setattr(packed, name, offset)
    packed.length = length
    packed.row_tiles = tables.sizes.get("row_start", 0)
    packed.visits = tables.sizes.get("col_start", 0)
    packed.num_programs = tables.programs
    return packed


def forward_setup(plan: LaunchPlan):
    """plan.cuda_forward, built on first use: what a forward launch reads besides its tensors, as the extension's
    CudaForward struct (csrc/api.h): packed tile tables, softmax scale, tile config, grid size (0: one CTA per SM),
    whether it schedules dynamically (the extension keeps the counters), the arch."""
    if plan.cuda_forward is None:
        ext, options, arch = module(), plan.options, ARCHS[plan.backend]
        B, H, L, D = plan.shape
        tables = forward_tables(plan.patch_nums, plan.row_bits, *fwd_tile(D, options.cuda_fwd_config, arch), B * H,
                                plan.device)
        args = ext.CudaForward()
        args.tables, args.softmax_scale = _packed(ext, tables, L), plan.softmax_scale
        args.config = options.cuda_fwd_config
        args.num_ctas = tables.programs if options.cuda_scheduler == "grid" else 0
        args.dynamic = options.cuda_scheduler == "dynamic" and arch == 90
        args.arch = arch
        plan.cuda_forward = args
    return plan.cuda_forward


def backward_setup(plan: LaunchPlan):
    """plan.cuda_backward, built on first use: what a CUDA backward launch reads besides its tensors, as the
    extension's CudaBackward struct (csrc/api.h): the packed tables of the transposed pattern (and for sm90 of the
    pattern and the paired program table; tiles.backward_tables), softmax scale, config, arch."""
    if plan.cuda_backward is None:
        ext, arch = module(), ARCHS[plan.backend]
        config = plan.options.cuda_bwd_config
        if config is None:
            config = ext.bwd_default_config
        B, H, L, D = plan.shape
        patch_nums, row_bits, device = plan.patch_nums, plan.row_bits, plan.device
        args = ext.CudaBackward()
        rows, cols = bwd_tile(D, config, arch)
        if arch == 90:
            if config not in _built().get("bwd_configs", ()):
                raise ValueError(f"cuda_bwd_config={config} is not in this build (configs "
                                 f"{_built()['bwd_configs']}; dev builds keep only the default, see "
                                 "HMAR_CUDA_DEV_BUILD)")
            kv, q, pairs = backward_tables(patch_nums, row_bits, rows, cols, B * H, device)
            args.kv, args.q, args.pairs = _packed(ext, kv, L), _packed(ext, q, L), _packed(ext, pairs, L)
        else:
            args.kv = _packed(ext, forward_tables(patch_nums, transpose_bits(row_bits), rows, cols, B * H, device), L)
        args.softmax_scale, args.config, args.arch = plan.softmax_scale, config, arch
        plan.cuda_backward = args
    return plan.cuda_backward


def forward(q, k, v, patch_nums: tuple[int, ...], row_bits: tuple[int, ...], softmax_scale: float,
            arch: int = 90):
    """q, k, v: (B, H, L, D) bf16/fp16 on a GPU the arch runs on → out (B, H, L, D) in q's dtype, lse (B, H, L)
    fp32 (natural log; -inf for rows that see no key)."""
    return run_forward(launch_plan(NAMES[arch], patch_nums, row_bits, softmax_scale, q), q, k, v)


def run_forward(plan: LaunchPlan, q, k, v):
    """``forward`` under a plan (backend "cuda" or "cuda_sm80") for q's shape, dtype and device."""
    ext = module()
    q, k, v = (tma_ready(t) for t in (q, k, v))
    B, H, L, D = q.shape
    args = plan.cuda_forward or forward_setup(plan)
    out = new_output((B, H, L, D), q.dtype, q.device)
    lse = new_output((B, H, L), torch.float32, q.device)
    ext.fwd(q, k, v, out, lse, args, current_stream(q.device.index))
    return out, lse


def backward(dout, q, k, v, out, lse, patch_nums: tuple[int, ...], row_bits: tuple[int, ...],
             softmax_scale: float, arch: int = 90):
    """(dq, dk, dv), each (B, H, L, D) in q's dtype: the CUDA backward of ``arch``, or the Triton backward under
    ``KernelOptions(cuda_backward="triton")``."""
    return run_backward(launch_plan(NAMES[arch], patch_nums, row_bits, softmax_scale, q), dout, q, k, v, out, lse)


def run_backward(plan: LaunchPlan, dout, q, k, v, out, lse):
    """``backward`` under a plan (backend "cuda" or "cuda_sm80") for q's shape, dtype and device."""
    if plan.options.cuda_backward == "triton":
        from .triton import host

        return host.run_backward(plan, dout, q, k, v, out, lse)
    ext = module()
    dout, q, k, v, out = (tma_ready(t) for t in (dout, q, k, v, out))
    args = plan.cuda_backward or backward_setup(plan)
    dq, dk, dv = (new_output(q.shape, q.dtype, q.device) for _ in range(3))
    ext.bwd(q, k, v, out, dout, lse, dq, dk, dv, args, current_stream(q.device.index))
    return dq, dk, dv
