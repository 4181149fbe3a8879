"""Host time of one fwd+bwd call, split into the forward and the backward (torch.autograd.grad), back to back and
from an idle GPU (synchronised before each call, as hmar-bench's idle timing), for our paths and SDPA.

    python bench/engine_timeline.py [--px 256] [--pattern block_diagonal]

Rows: triton and cuda launched from C++ (the default eager path), triton launched from Python (the autograd.Function
over the Python launchers), sdpa;
plus the Python path with torch.autograd.set_multithreading_enabled(False), where the backward runs on the calling
thread instead of the autograd engine's device thread.
"""
import argparse
import statistics
import time

import torch

import hmar_kernels
from hmar_kernels import ops
from hmar_kernels.api import _plan
from hmar_kernels.plan import launch_plan
from hmar_bench.harness import SCHEDULES


def split_us(fwd, grad, idle: bool, n=200):
    """Median host µs of (forward, backward, whole call) and the median CUDA-event wall µs of the call."""
    parts, walls = [], []
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(n + 20):
        if idle or i % 16 == 0:
            torch.cuda.synchronize()
        start_event.record()
        t0 = time.perf_counter()
        out = fwd()
        t1 = time.perf_counter()
        grad(out)
        t2 = time.perf_counter()
        end_event.record()
        if idle:
            end_event.synchronize()
            walls.append(start_event.elapsed_time(end_event) * 1e3)
        if i >= 20:
            parts.append(((t1 - t0) * 1e6, (t2 - t1) * 1e6, (t2 - t0) * 1e6))
    torch.cuda.synchronize()
    medians = [statistics.median(p[j] for p in parts) for j in range(3)]
    return medians + [statistics.median(walls) if walls else float("nan")]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--pattern", default="block_diagonal")
    args = parser.parse_args()
    pn = SCHEDULES[args.px]
    shape = (4, 16, sum(p * p for p in pn), 64)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    _, row_bits, scale, _ = _plan(pn, args.pattern, None, "triton", q.device, q.dtype, shape)
    grad = lambda out: torch.autograd.grad(out, (q, k, v), dout)
    paths = {
        "triton, C++ launches": lambda: hmar_kernels.attention(q, k, v, pn, args.pattern, backend="triton"),
        "cuda fwd, C++ launches": lambda: hmar_kernels.attention(q, k, v, pn, args.pattern, backend="cuda"),
        "triton, Python launches": lambda: ops._EagerAttention.apply(q, k, v, launch_plan("triton", pn, row_bits,
                                                                                          scale, q)),
        "sdpa": lambda: hmar_kernels.attention(q, k, v, pn, args.pattern, backend="sdpa"),
    }
    print(f"{args.px} px {args.pattern}, B=4 H=16 D=64 bf16; host µs: forward / backward / call; wall µs (idle)")
    for threads in (True, False):
        with torch.autograd.set_multithreading_enabled(threads):
            for name, fwd in paths.items():
                for idle in (False, True):
                    f, b, c, w = split_us(fwd, grad, idle)
                    mode = "idle" if idle else "back to back"
                    print(f"  {name:24s} threads={threads!s:5} {mode:12s} {f:7.1f} / {b:7.1f} / {c:7.1f}  wall {w:7.1f}")


if __name__ == "__main__":
    main()
