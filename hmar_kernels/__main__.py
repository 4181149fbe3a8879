"""``python -m hmar_kernels``: which backends can run here, and why the others cannot.

Prints the versions, whether the CUDA extension is built (and what it holds), then one line per backend: "ok"
or the reason it cannot run, for the first GPU (bf16, D = 64) or, without one, for CPU tensors.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch
import triton

from .api import BACKENDS, _cuda_problem, _triton_problem, _varlen_problem
from .backends import cuda


def backend_problems(device: torch.device, dtype: torch.dtype = torch.bfloat16, head_dim: int = 64) -> dict:
    """backend → None (it runs on such inputs here) or why it cannot."""
    on_gpu = device.type == "cuda"
    varlen = _varlen_problem(device, dtype, (1,))  # a one-scale schedule: block-diagonal
    if varlen is None and importlib.util.find_spec("torch.nn.attention.varlen") is None:
        varlen = f"torch {torch.__version__} has no torch.nn.attention.varlen"
    return {
        "cuda": _cuda_problem(device, dtype, head_dim),
        "cuda_sm80": _cuda_problem(device, dtype, head_dim, arch=80),
        "triton": _triton_problem(device, dtype, head_dim),
        "reference": None,
        "sdpa": None,
        "flex": None if on_gpu else "runs forward only on the CPU (FlexAttention has no CPU backward)",
        "varlen": varlen,
    }


def main() -> int:
    has_gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if has_gpu else torch.device("cpu")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
          f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    print(f"device: {torch.cuda.get_device_name(0) if has_gpu else 'no CUDA device: CPU'}")
    ext, why = cuda._extension()
    if ext is None:
        print(f"CUDA extension: not available: {why}")
    else:
        built = dict(ext.built())
        launcher = "with" if hasattr(ext, "PlanSpec") else "without"
        print(f"CUDA extension: built ({ext.__name__}; dtypes {', '.join(built['dtypes'])}, head dims "
              f"{', '.join(map(str, built['head_dims']))}; backward configs "
              f"{', '.join(map(str, built.get('bwd_configs', ()))) or 'none'}; {launcher} the C++ launcher)")
    dtype = torch.bfloat16 if has_gpu else torch.float32
    print(f"backends for {dtype} q, k, v with D = 64 on {device}:")
    problems = backend_problems(device, dtype)
    for name in BACKENDS[1:]:
        print(f"  {name:<10} {'ok' if problems[name] is None else problems[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
