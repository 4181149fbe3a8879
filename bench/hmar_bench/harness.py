"""Shared measuring tools: useful FLOPs from the schedule, CUDA-event timing, peak memory, error vs reference.

Every benchmark (the attention table, hmar-bench, the model benches, pytest-benchmark suites) goes through these,
so all backends are timed the same way.

Timing: each repetition starts from an idle device (synchronise, record start event, call, record end event,
wait), so a call's host overhead is included (at 256 px the host, not the GPU, is the bottleneck) and
``median`` is taken over repetitions after a warm-up of at least 25 ms. Input sets are rotated so small problems do not sit in L2.
"""
from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from hmar_kernels import tolerance
from hmar_kernels.tiles import PATCH_NUMS, allowed_pairs

FWD_BWD_FACTOR = 3.5  # backward = 2.5 × forward (5 matmuls instead of 2): fwd+bwd = 3.5 × forward


def useful_flops(patch_nums: tuple[int, ...], row_bits: tuple[int, ...], batch: int, heads: int, head_dim: int,
                 with_backward: bool = False) -> float:
    """4·B·H·D·(allowed query-key pairs), × 3.5 for forward + backward."""
    flops = 4.0 * batch * heads * head_dim * allowed_pairs(patch_nums, row_bits)
    return flops * FWD_BWD_FACTOR if with_backward else flops


def rotation_count(bytes_per_set: int, l2_bytes: int = 50 * 2**20, most: int = 8) -> int:
    """How many input sets to rotate through so that consecutive calls do not hit in L2."""
    return max(1, min(most, -(-2 * l2_bytes // max(1, bytes_per_set))))


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    reps: int


def time_cuda(call: Callable[[int], object], warmup: int = 3, reps: int = 20, warmup_ms: float = 25.0) -> Timing:
    """Median time of ``call(i)`` (i = repetition index, for rotating inputs) with CUDA events.

    Warm-up: at least ``warmup`` calls and ``warmup_ms`` of wall time (as triton.testing.do_bench), so that a
    launch-bound call, which leaves the GPU mostly idle, is not timed before the clocks have ramped up."""
    i, start_wall = 0, time.perf_counter()
    while i < warmup or (time.perf_counter() - start_wall) * 1e3 < warmup_ms:
        call(i)
        i += 1
        if i % 8 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(reps):
        torch.cuda.synchronize()
        start.record()
        call(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return Timing(statistics.median(times), min(times), reps)


def time_interleaved(calls: dict, rounds: int = 5, reps: int = 2) -> dict:
    """Median ms of each ``calls[name](i)``, timed by ``time_cuda`` in alternating rounds (all names once per
    round), so that drift in host speed, which moves host-bound calls by ±20% within minutes on one
    machine, hits every entry alike instead of whichever ran last."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(time_cuda(call, warmup=1, reps=reps).median_ms)
    return {name: statistics.median(t) for name, t in times.items()}


def time_steady(call: Callable[[int], object], warmup_ms: float = 25.0, rep_ms: float = 100.0) -> float:
    """Median ms of ``call(i)`` timed as ``triton.testing.do_bench`` times (the methodology of the anchors in
    docs/benchmarks.md): calls back to back with an L2 flush between them, so a call's host overhead overlaps the
    previous call's GPU work; what a training loop that keeps the GPU busy sees."""
    from triton.testing import do_bench

    count = itertools.count()
    return do_bench(lambda: call(next(count)), warmup=warmup_ms, rep=rep_ms, return_mode="median")


def peak_memory_mb(call: Callable[[], object]) -> float:
    """Peak CUDA memory allocated during ``call()``, above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def max_relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out − ref| / max |ref| (NaN anywhere gives inf)."""
    diff = (out.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    if diff != diff:
        return float("inf")
    return diff / max(scale, 1e-30)


def fwd_bwd_call(attend: Callable, inputs: Sequence[tuple]) -> Callable[[int], object]:
    """A ``call(i)`` running forward and backward on input set i mod len(inputs): (q, k, v, dout), q/k/v leaves."""
    def call(i):
        q, k, v, dout = inputs[i % len(inputs)]
        out = attend(q, k, v)
        return torch.autograd.grad(out, (q, k, v), dout)
    return call


def fwd_call(attend: Callable, inputs: Sequence[tuple]) -> Callable[[int], object]:
    def call(i):
        q, k, v, _ = inputs[i % len(inputs)]
        with torch.no_grad():
            return attend(q, k, v)
    return call


def capture_graph(call: Callable[[], object], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, object]:
    """(graph, static result) of ``call()`` captured in a CUDA graph, after ``warmup`` calls on a side stream
    (torch.cuda.graph's recipe: lazy initialisation, autotuning and cached tables happen outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = call()
    return graph, result


def graph_replays(make_call: Callable, inputs: Sequence[tuple]) -> tuple[Callable[[int], object], list]:
    """A ``call(i)`` replaying the graph of input set i mod len(inputs) (one capture per set, so that replays
    rotate through the sets as ``time_cuda``'s eager calls do), and each graph's static results.

    ``make_call`` is ``fwd_call`` or ``fwd_bwd_call`` of an attend function; grads come from
    torch.autograd.grad inside the capture, so the replays rewrite the same static gradient tensors."""
    graphs, results = [], []
    for one_set in inputs:
        graph, result = capture_graph(lambda s=one_set: make_call([s])(0))
        graphs.append(graph)
        results.append(result)
    return (lambda i: graphs[i % len(graphs)].replay()), results


def capture_problem(error: BaseException) -> str:
    """One line naming why a capture failed: the first error raised (torch.cuda.graph's exit raises its own
    error on top of the one that broke the capture)."""
    def line(e):
        return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"

    return line(error) + (f" (after {line(error.__context__)})" if error.__context__ is not None else "")


# --------------------------------------------------------------------------------------------------------------
# The attention sweep: one case = (schedule, pattern, backend, dtype, shape). hmar-bench and the pytest-benchmark
# suites in bench/ both build their cases, inputs, references and errors here.

SCHEDULES = PATCH_NUMS
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PATTERNS = ("block_diagonal", "block_causal")
# The measured dense FlashAttention rate (docs/benchmarks.md): SDPA's FlashAttention kernel, no mask, all L² pairs
# counted as useful. Its rows carry this backend and pattern so that they never mix with the masked backends.
DENSE_BACKEND = "dense_fa"
DENSE_PATTERN = "dense"
OUR_BACKENDS = ("cuda", "cuda_sm80", "triton")
ANCHOR_BACKENDS = ("sdpa", "flex", "varlen")
SWEEP_BACKENDS = OUR_BACKENDS + ANCHOR_BACKENDS + (DENSE_BACKEND,)


@dataclass(frozen=True)
class AttentionCase:
    """One point of the sweep: q, k, v of shape (batch, heads, L, head_dim) over ``patch_nums``."""

    patch_nums: tuple[int, ...]
    pattern: str  # "block_diagonal", "block_causal", or DENSE_PATTERN (with backend DENSE_BACKEND)
    backend: str  # an hmar_kernels.attention backend, or DENSE_BACKEND
    dtype: str  # a key of DTYPES
    batch: int
    heads: int
    head_dim: int
    px: int = 0  # resolution label of the schedule (0: a custom schedule)

    @classmethod
    def at(cls, px: int, pattern: str, backend: str, dtype: str, batch: int, heads: int, head_dim: int):
        if backend == DENSE_BACKEND:
            pattern = DENSE_PATTERN
        return cls(SCHEDULES[px], pattern, backend, dtype, batch, heads, head_dim, px)

    @property
    def length(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def row_bits(self) -> tuple[int, ...]:
        s = len(self.patch_nums)
        if self.pattern == DENSE_PATTERN:
            return ((1 << s) - 1,) * s
        from hmar_kernels.tiles import named_pattern_bits

        return named_pattern_bits(self.pattern, s)

    @property
    def softmax_scale(self) -> float:
        return self.head_dim ** -0.5

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.length, self.head_dim)

    def flops(self, with_backward: bool = False) -> float:
        """Useful FLOPs (dense rows: all L² pairs)."""
        return useful_flops(self.patch_nums, self.row_bits, self.batch, self.heads, self.head_dim, with_backward)

    def unavailable(self, device: torch.device) -> str | None:
        """Why this backend cannot run this case on ``device`` (the API's own message), or None."""
        if self.backend == DENSE_BACKEND:
            if device.type != "cuda" or self.dtype not in ("bf16", "fp16"):
                return f"{DENSE_BACKEND} (SDPA FlashAttention) needs CUDA bf16/fp16 tensors, got {self.dtype} on " \
                       f"{device.type}"
            return None
        from hmar_kernels.api import _plan

        try:
            _plan(self.patch_nums, self.pattern, None, self.backend, device, self.torch_dtype, self.shape)
        except ValueError as error:
            return str(error)
        return None

    def attend(self) -> Callable:
        """``attend(q, k, v) -> out`` running this case's backend."""
        if self.backend == DENSE_BACKEND:
            return _dense_flash_attention
        from hmar_kernels.api import attention

        patch_nums, pattern, backend = self.patch_nums, self.pattern, self.backend

        def attend(q, k, v):
            return attention(q, k, v, patch_nums, pattern, backend=backend)

        return attend

    def label(self) -> str:
        where = f"{self.px}px" if self.px else f"L={self.length}"
        return f"{where} {self.pattern} {self.dtype} D={self.head_dim} {self.backend}"


def _dense_flash_attention(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def make_inputs(case: AttentionCase, device, sets: int | None = None, seed: int = 0) -> list[tuple]:
    """Input sets (q, k, v, dout) for ``case``; q, k, v are leaves that require grad.

    By default as many sets as ``rotation_count`` asks for, so that rotating through them keeps L2 cold.
    """
    if sets is None:
        bytes_per_set = 4 * case.batch * case.heads * case.length * case.head_dim * case.torch_dtype.itemsize
        sets = rotation_count(bytes_per_set)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(sets):
        q, k, v, dout = (torch.randn(case.shape, device=device, dtype=case.torch_dtype, generator=generator)
                         for _ in range(4))
        out.append((q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dout))
    return out


def reference_outputs(case: AttentionCase, inputs: tuple, dtype: torch.dtype = torch.float32,
                      whole_batch: bool = False) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv) of the reference on batch element 0 of one input set (all of it with ``whole_batch``),
    computed in ``dtype``.

    Batch element 0 alone keeps the reference's L×L-sized intermediates small at 1024 px (the result is exact
    per batch element, so nothing is lost); kernels are then compared on that element of their full results.
    """
    from hmar_kernels.reference import reference_attention

    batch = slice(None) if whole_batch else slice(0, 1)
    q, k, v, dout = (t[batch].detach().to(dtype) for t in inputs)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with torch.enable_grad():
        out, _ = reference_attention(q, k, v, case.patch_nums, case.row_bits, case.softmax_scale)
        grads = torch.autograd.grad(out, (q, k, v), dout)
    return (out.detach(), *grads)


def run_fwd_bwd(attend: Callable, inputs: tuple) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv) of ``attend`` on one input set."""
    q, k, v, dout = inputs
    with torch.enable_grad():
        out = attend(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), dout)
    return (out.detach(), *grads)


def max_error_vs(results: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """Largest ``max_relative_error`` over (out, dq, dk, dv), comparing batch element 0 of ``results``."""
    return max(max_relative_error(r[:1], ref) for r, ref in zip(results, reference))


def error_bound(out: torch.Tensor, golden: torch.Tensor, baseline: torch.Tensor) -> tuple[float, float]:
    """(error, bound) of hmar_kernels.tolerance's rule, without its fp32 floor (the sweep holds kernels to the
    stricter bound; the tests add the floor). NaN or inf in ``out`` gives an infinite error and a zero bound."""
    check = tolerance.error_bound(out, golden, baseline, floor_ulps=0)
    return (check.error, check.bound) if check.error != float("inf") else (check.error, 0.0)


def synchronize(device):
    """Wait for ``device`` (a no-op off CUDA, so that sweeps also run, untimed, on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _wall(call: Callable[[], object], device) -> float:
    """Seconds of wall time of ``call()``, synchronised at both ends."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def measure_case(case: AttentionCase, inputs: Sequence[tuple], reference: Sequence[torch.Tensor] | None,
                 reps: int = 20, warmup: int = 3) -> tuple[dict, dict]:
    """Time one case on CUDA: (row, phases).

    row: fwd_ms, fwdbwd_ms (medians of ``time_cuda``: from an idle GPU, host time included), useful TFLOP/s,
    the same as *_steady_* (``time_steady``: back to back, as do_bench), peak_mem_mb (fwd+bwd), max_rel_err (out
    and gradients against ``reference``, see ``reference_outputs``; NaN without one) and first_call_s.
    phases: wall seconds of "first call" (compilation, autotuning: the first fwd+bwd and the first no-grad
    forward), "timing" and "memory".
    """
    attend = case.attend()
    device = inputs[0][0].device
    results = []
    first = _wall(lambda: results.append(run_fwd_bwd(attend, inputs[0])), device)
    first += _wall(lambda: fwd_call(attend, inputs)(0), device)
    error = max_error_vs(results[0], reference) if reference is not None else float("nan")
    del results
    start = time.perf_counter()
    fwd = time_cuda(fwd_call(attend, inputs), warmup=warmup, reps=reps)
    fwdbwd = time_cuda(fwd_bwd_call(attend, inputs), warmup=warmup, reps=reps)
    fwd_steady = time_steady(fwd_call(attend, inputs))
    fwdbwd_steady = time_steady(fwd_bwd_call(attend, inputs))
    timing = time.perf_counter() - start
    start = time.perf_counter()
    peak = peak_memory_mb(lambda: fwd_bwd_call(attend, inputs)(0))
    memory = time.perf_counter() - start
    flops = case.flops()
    row = dict(px=case.px, L=case.length, B=case.batch, H=case.heads, D=case.head_dim, dtype=case.dtype,
               pattern=case.pattern, backend=case.backend, fwd_ms=fwd.median_ms, fwdbwd_ms=fwdbwd.median_ms,
               fwd_tflops=flops / fwd.median_ms / 1e9,
               fwdbwd_tflops=flops * FWD_BWD_FACTOR / fwdbwd.median_ms / 1e9,
               fwd_steady_ms=fwd_steady, fwdbwd_steady_ms=fwdbwd_steady,
               fwd_steady_tflops=flops / fwd_steady / 1e9,
               fwdbwd_steady_tflops=flops * FWD_BWD_FACTOR / fwdbwd_steady / 1e9,
               peak_mem_mb=peak, max_rel_err=error, first_call_s=first)
    return row, {"first call": first, "timing": timing, "memory": memory}


GRAPH_COLUMNS = ("fwd_graph_ms", "fwdbwd_graph_ms", "fwd_graph_tflops", "fwdbwd_graph_tflops")


def measure_graphs(case: AttentionCase, inputs: Sequence[tuple], reps: int = 20, warmup: int = 3
                   ) -> tuple[dict, str | None]:
    """Kernel time of one case without its host path: (columns, problem).

    The forward and the forward+backward are each captured once per input set with ``capture_graph`` and the
    replays timed by ``time_cuda`` (median, warmed up): fwd_graph_ms, fwdbwd_graph_ms and their useful TFLOP/s.
    Where the backend cannot be captured, the columns are NaN and ``problem`` says why (``capture_problem``).
    """
    attend = case.attend()
    try:
        fwd, _ = graph_replays(lambda s: fwd_call(attend, s), inputs)
        fwd_ms = time_cuda(fwd, warmup=warmup, reps=reps).median_ms
        del fwd
        fwdbwd, _ = graph_replays(lambda s: fwd_bwd_call(attend, s), inputs)
        fwdbwd_ms = time_cuda(fwdbwd, warmup=warmup, reps=reps).median_ms
        del fwdbwd
    except Exception as error:  # a backend that cannot be captured leaves its cells empty, with the reason
        synchronize(inputs[0][0].device)
        return dict.fromkeys(GRAPH_COLUMNS, float("nan")), capture_problem(error)
    flops = case.flops()
    return dict(fwd_graph_ms=fwd_ms, fwdbwd_graph_ms=fwdbwd_ms, fwd_graph_tflops=flops / fwd_ms / 1e9,
                fwdbwd_graph_tflops=flops * FWD_BWD_FACTOR / fwdbwd_ms / 1e9), None


def check_case(case: AttentionCase, device, attend: Callable | None = None, seed: int = 0) -> dict:
    """Correctness of one case against the float64 reference, with the tests' rule (``error_bound``).

    Returns {"out": error/bound, "dq": ..., "dk": ..., "dv": ..., "worst": max ratio}; ratio ≤ 1 passes.
    ``attend`` overrides the case's backend (tests use it to check that a wrong kernel fails).
    """
    inputs = make_inputs(case, device, sets=1, seed=seed)[0]
    results = run_fwd_bwd(attend or case.attend(), inputs)
    golden = reference_outputs(case, inputs, torch.float64, whole_batch=True)
    baseline = reference_outputs(case, inputs, case.torch_dtype, whole_batch=True)
    ratios = {}
    for name, r, g, b in zip(("out", "dq", "dk", "dv"), results, golden, baseline):
        error, bound = error_bound(r, g, b)
        ratios[name] = error / bound if bound > 0 else float("inf")
    ratios["worst"] = max(ratios.values())
    return ratios


def git_commit() -> str:
    """Short hash of the checkout; HMAR_GIT_COMMIT overrides it (copies of the tree without their .git)."""
    if os.environ.get("HMAR_GIT_COMMIT"):
        return os.environ["HMAR_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"
