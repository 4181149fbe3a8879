"""The fast sampler, on by default on CUDA: the transformer blocks of HMAR's per-scale passes compiled
(``CompiledInference``) and the VQVAE decoder compiled in channels-last (``CompiledDecoding``), inside the captured
scale loop.

    fast_model, fast_vqvae = fast_sampler(model, vqvae, dtype=torch.bfloat16)   # once per model pair
    images = sample(fast_model, fast_vqvae, labels=[207, 360], seed=0, dtype=torch.bfloat16)

``compile``: None → on for CUDA models where ``torch.compile`` can run (otherwise the eager pair, with a one-time
notice saying why on a CUDA model); False → the eager pair (the reference); True → compiled, or a ValueError
saying why not. Compilation happens in the first ``sample`` call (one block compiled with dynamic shapes serves
every block of both passes at every scale and batch: two graphs, the one-token first scale and the others, whatever
the depth; the decoder: one per batch size, smaller batches padded, see ``CompiledDecoding``).
Keep the returned pair and reuse it: new wrappers compile again.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Optional

import torch

from hmar_kernels.notices import warn_once

from .sampling import CompiledInference
from .vqvae import CompiledDecoding


def compile_unavailable_reason(device) -> Optional[str]:
    """Why ``torch.compile`` (Inductor) cannot compile the sampler on ``device``, or None when it can."""
    import torch._dynamo  # here: importing Dynamo takes a while, and only the compiled path needs it

    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor} " \
               f"in torch {torch.__version__}"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed (Inductor generates its CUDA kernels with it)"
    return None


def resolve_compile(compile: Optional[bool], device) -> bool:
    """None → on for CUDA where it can run (a one-time notice when a CUDA model cannot), off elsewhere;
    True where it cannot run raises ValueError; False → off."""
    if compile is not None and not isinstance(compile, bool):
        raise TypeError(f"compile must be None, True or False, got {compile!r}")
    device = torch.device(device)
    reason = compile_unavailable_reason(device)
    if compile is None:
        if device.type == "cuda" and reason is not None:
            warn_once(f"hmar_model: the sampler runs eagerly (slower): {reason}", stacklevel=3)
        return device.type == "cuda" and reason is None
    if compile and reason is not None:
        raise ValueError(f"compile=True: {reason}; pass compile=False (--no-compile) for the eager sampler")
    return compile


def fast_sampler(model, vqvae, *, compile: Optional[bool] = None, dtype: Optional[torch.dtype] = None,
                 compile_backend="inductor"):
    """(model, vqvae) for ``sample``: compiled wrappers (see the module docstring), or the pair unchanged.

    ``dtype``: the decoder's precision, the ``dtype`` given to ``sample`` (None: float32). Wrappers already in
    the pair are kept as they are (never wrapped twice).
    """
    device = model.lvl_1L.device
    if not resolve_compile(compile, device):
        return model, vqvae
    if not isinstance(model, CompiledInference):
        model = CompiledInference(model, compile_backend=compile_backend)
    if not isinstance(vqvae, CompiledDecoding):
        vqvae = CompiledDecoding(vqvae, dtype=dtype or torch.float32, compile_backend=compile_backend)
    return model, vqvae


def is_compiled(model, vqvae) -> bool:
    """Whether a pair from ``fast_sampler`` runs compiled (recorded with generated sample sets)."""
    return isinstance(model, CompiledInference) or isinstance(vqvae, CompiledDecoding)
