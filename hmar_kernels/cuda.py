"""The hand-written CUDA backend (csrc/): loads the compiled extension ``hmar_kernels._C``."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _extension():
    """(module, None) when the extension imports, else (None, why not)."""
    try:
        from . import _C  # noqa: F401  (built by setup.py when torch has CUDA and nvcc is found)
    except ImportError as error:
        return None, f"the CUDA extension hmar_kernels._C is not built ({error})"
    return _C, None


def problem(device, dtype, head_dim) -> str | None:
    """Why backend 'cuda' cannot run on such inputs, or None."""
    module, why = _extension()
    if module is None:
        return why
    return "backend 'cuda' has no kernels yet"
