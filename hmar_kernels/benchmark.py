"""Shared measuring tools: useful FLOPs from the schedule, CUDA-event timing, peak memory, error vs reference.

Every benchmark (the attention table, hmar-bench, the model benches, pytest-benchmark suites) goes through these,
so all backends are timed the same way.

Timing: each repetition starts from an idle device (synchronise, record start event, call, record end event,
wait), so a call's host overhead is included (at 256 px the host, not the GPU, is the bottleneck) and
``median`` is taken over repetitions after warm-up. Input sets are rotated so small problems do not sit in L2.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .schedule import allowed_pairs

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


def time_cuda(call: Callable[[int], object], warmup: int = 3, reps: int = 20) -> Timing:
    """Median time of ``call(i)`` (i = repetition index, for rotating inputs) with CUDA events."""
    for i in range(warmup):
        call(i)
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
