"""Where the time of one attention call goes at a launch-bound size (GPU only).

    python bench/call_overhead.py [--px 256] [--pattern block_diagonal] [--profile]

Rows (fwd+bwd unless said): the public API with autograd (triton, and cuda where it runs); the Triton launchers called directly (no custom op, no
autograd); the same launches replayed from a CUDA graph (kernel time only); host time per call with no
synchronisation between calls; SDPA with a boolean mask for comparison; then the host time of the pieces of a
call (validation, allocation, descriptors, launches, an empty autograd.Function for the engine's own cost).
"""
import argparse
import cProfile
import pstats
import time

import torch

import hmar_kernels
from hmar_bench import harness as bm
from hmar_kernels.api import _plan
from hmar_kernels.backends import cuda
from hmar_kernels.backends.triton import host as launch
from hmar_bench.harness import SCHEDULES


def host_us(call, n=200):
    """Mean host time per call with no synchronisation inside the loop, µs."""
    for _ in range(10):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        call()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / n * 1e6


def graph_us(call, n=50):
    """Kernel time per call from CUDA-graph replays, µs."""
    graph, _ = bm.capture_graph(call)
    return bm.time_cuda(lambda i: graph.replay(), reps=n).median_ms * 1e3


class _EmptyFunction(torch.autograd.Function):
    """Saves q, k, v and returns fresh tensors: the autograd engine's cost of a Python Function, nothing else."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, dout):
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors)


def pieces(q, k, v, dout, pn, pattern):
    """(name, call) for each piece of one Triton fwd+bwd call's host path."""
    from hmar_kernels import buffers
    from hmar_kernels.api import _validate_tensors

    _, row_bits, scale, _ = _plan(pn, pattern, None, "triton", q.device, q.dtype, tuple(q.shape))
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    out, lse = launch.forward(qd, kd, vd, pn, row_bits, scale)

    def empty_function():
        return torch.autograd.grad(_EmptyFunction.apply(q, k, v), (q, k, v), dout)

    return [
        ("validate + plan", lambda: (_validate_tensors(q, k, v),
                                     _plan(pn, pattern, None, "triton", q.device, q.dtype, tuple(q.shape)))),
        ("tma_ready x3", lambda: [buffers.tma_ready(t) for t in (qd, kd, vd)]),
        ("new_output (B, H, L, D)", lambda: buffers.new_output(q.shape, q.dtype, q.device)),
        ("descriptor x3", lambda: [launch.descriptor(t, 64) for t in (qd, kd, vd)]),
        ("launch.forward", lambda: launch.forward(qd, kd, vd, pn, row_bits, scale)),
        ("launch.backward", lambda: launch.backward(dout, qd, kd, vd, out, lse, pn, row_bits, scale)),
        ("empty autograd.Function fwd+bwd", empty_function),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--pattern", default="block_diagonal")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of the API call")
    args = parser.parse_args()
    pn = SCHEDULES[args.px]
    length = sum(p * p for p in pn)
    shape = (args.batch, args.heads, length, 64)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    _, row_bits, scale, _ = _plan(pn, args.pattern, None, "triton", q.device, q.dtype, shape)

    def api(backend):
        def call():
            out = hmar_kernels.attention(q, k, v, pn, args.pattern, backend=backend)
            return torch.autograd.grad(out, (q, k, v), dout)
        return call

    def direct():
        out, lse = launch.forward(q.detach(), k.detach(), v.detach(), pn, row_bits, scale)
        return launch.backward(dout, q.detach(), k.detach(), v.detach(), out, lse, pn, row_bits, scale)

    def direct_fwd():
        return launch.forward(q.detach(), k.detach(), v.detach(), pn, row_bits, scale)

    rows = [
        ("api triton fwd+bwd, wall", bm.time_cuda(lambda i: api("triton")(), reps=50).median_ms * 1e3),
        ("api triton fwd+bwd, host", host_us(api("triton"))),
        ("direct launches fwd+bwd, wall", bm.time_cuda(lambda i: direct(), reps=50).median_ms * 1e3),
        ("direct launches fwd+bwd, host", host_us(direct)),
        ("direct launches fwd+bwd, graph (kernels)", graph_us(direct)),
        ("direct launch fwd, wall", bm.time_cuda(lambda i: direct_fwd(), reps=50).median_ms * 1e3),
        ("direct launch fwd, graph (kernels)", graph_us(direct_fwd)),
        ("api sdpa fwd+bwd, wall", bm.time_cuda(lambda i: api("sdpa")(), reps=50).median_ms * 1e3),
        ("api sdpa fwd+bwd, host", host_us(api("sdpa"))),
    ]
    if cuda.problem(q.device, q.dtype, 64) is None:
        rows += [("api cuda fwd+bwd, wall", bm.time_cuda(lambda i: api("cuda")(), reps=50).median_ms * 1e3),
                 ("api cuda fwd+bwd, host", host_us(api("cuda")))]
    rows += [(f"host: {name}", host_us(call)) for name, call in pieces(q, k, v, dout, pn, args.pattern)]
    print(f"{args.px} px {args.pattern} B={args.batch} H={args.heads} D=64 bf16")
    for name, us in rows:
        print(f"  {name:45s} {us:9.1f} us")
    if args.profile:
        call = api("triton")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(100):
            call()
        profiler.disable()
        torch.cuda.synchronize()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
