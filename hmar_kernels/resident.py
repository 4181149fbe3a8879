"""Device tensors that live as long as the process (tile tables, masks), made where no CUDA
graph claims their memory.

A tensor cached on a first call must not come from a CUDA graph's private memory pool. ``torch.cuda.graph``
routes the capturing stream's allocations there, and ``torch.compile(mode="reduce-overhead")`` routes every
allocation of the thread that warms up or records a graph there; a cached tensor from such a pool is reported
("tensor(s) in the cudagraph pool not tracked as outputs") or overwritten by the next replay. ``resident`` runs
the builder on a helper thread, whose allocations no pool claims, and waits for its copies. Inside a capture it
refuses: copying host data to the device there would invalidate the capture, so the first call with new
arguments (which builds the tables) must happen before capturing, as torch.cuda.graph's warm-up does.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

_BUILDER = "hmar-resident"
_builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_BUILDER)


def resident(build: Callable[[], T], device: torch.device) -> T:
    """``build()`` (which makes device tensors on ``device``), run outside every CUDA graph pool."""
    device = torch.device(device)
    if device.type != "cuda" or threading.current_thread().name.startswith(_BUILDER):  # nested: already there
        return build()
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("hmar_kernels: this call's tile tables (or mask) do not exist yet and cannot be built "
                           "inside a CUDA graph capture; run the same call once before capturing (a warm-up "
                           "step, as torch.cuda.graph's documentation asks), then capture")
    return _builder.submit(_build_and_wait, build, device).result()


def _build_and_wait(build: Callable[[], T], device: torch.device) -> T:
    with torch.cuda.device(device):
        result = build()
        torch.cuda.current_stream(device).synchronize()  # the copies are done before another stream reads them
    return result


def host_to_device(array, device: torch.device) -> torch.Tensor:
    """A numpy array (or anything torch.as_tensor takes) as a resident tensor on ``device``."""
    return resident(lambda: torch.as_tensor(array).to(device), device)
