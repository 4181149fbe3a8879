"""Launch configurations of the Triton kernels and a small autotuner.

Triton's own ``@triton.autotune`` cannot be used: the tile metadata (which KV tiles each Q tile visits) depends
on the tile shape, so every candidate needs its own TileMask. ``pick`` times the candidates once per key with
CUDA events and remembers the fastest.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ...options import current_options


@dataclass(frozen=True)
class FwdConfig:
    block_m: int  # Q rows per program
    block_n: int  # keys per inner iteration
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class BwdConfig:
    block_m: int  # Q rows per dQ program, and per inner iteration of a dK/dV program
    block_n: int  # keys per dK/dV program, and per inner iteration of a dQ program
    num_warps: int
    num_stages: int


# Small tiles for the CPU interpreter (tests at small shapes): many tile boundaries inside few tokens.
INTERPRETER_FWD = FwdConfig(16, 16, 1, 1)
INTERPRETER_BWD = BwdConfig(16, 16, 1, 1)


@functools.lru_cache(maxsize=None)
def fwd_candidates(head_dim: int) -> Sequence[FwdConfig]:
    """Hopper-minded forward configs, default first.

    Measured on the H100 (bf16, D=64, B=4, H=16; kernel time from CUDA-graph replays, 2026-11-22, after the
    score-scale FMA): 1024 px diagonal (128, 64, 4 warps, 3 stages) 1.145 ms, (128, 64, 8, 3) 1.142,
    (128, 64, 8, 4) 1.153, (64, 64, 4, 3) 1.181; causal 2.536 / 2.502 / 2.530 / 2.595. 512 px: all four
    within 5%. Lost everywhere, so not candidates: (128, 128, 8, 3) by 20-35%, 256-row tiles with 8 warps by
    25-30%, 2 stages by 4-6%. Resources for sm_90 (bench/triton_registers.py): no candidate spills; registers at
    D=64: (128, 64, 4) 201, (64, 64, 4) 107; at D=128: (128, 64, 8) 151 with 96 KiB of shared memory,
    (128, 32, 8) 115, (64, 64, 8) 121.
    """
    if head_dim <= 64:
        return (FwdConfig(128, 64, 4, 3), FwdConfig(128, 64, 8, 3), FwdConfig(64, 64, 4, 3),
                FwdConfig(128, 64, 8, 4))
    return (FwdConfig(128, 64, 8, 3), FwdConfig(64, 64, 4, 3), FwdConfig(128, 32, 8, 3), FwdConfig(64, 32, 4, 3))


@functools.lru_cache(maxsize=None)
def bwd_candidates(head_dim: int) -> Sequence[BwdConfig]:
    """Backward configs (one TileMask for the dK/dV and the dQ programs), default first.

    Measured on the H100 with separate dK/dV and dQ tiles (bf16, D=64, 2026-11-22): 64×64 tiles with 4 warps won
    at every schedule (1024 px diagonal 3.96 ms, causal 8.09), narrow 32-row slices for dK/dV tied within 1-5%,
    and 128-key tiles with 8 warps lost by 25-80%; hence one tile shape for both passes. Registers (no spills):
    D=64 (64, 64, 4) 177, (32, 64, 4) 194, (64, 32, 4) 228, (64, 128, 8) 212; D=128 (64, 64, 8) 184,
    (32, 64, 8) 248, (64, 32, 8) 253, (64, 64, 4) 226. With 4 warps, (32, 64) and (64, 32) spill at D=128.
    """
    if head_dim <= 64:
        return (BwdConfig(64, 64, 4, 3), BwdConfig(32, 64, 4, 3), BwdConfig(64, 32, 4, 3), BwdConfig(64, 128, 8, 3))
    return (BwdConfig(64, 64, 8, 2), BwdConfig(32, 64, 8, 3), BwdConfig(64, 32, 8, 3), BwdConfig(64, 64, 4, 2))


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_chosen: dict = {}
_timings: dict = {}


def _time_ms(run: Callable[[], None], reps: int = 10) -> float:
    run()  # compile and warm up
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def choose(kernel: str, fixed, key: tuple, run: Callable):
    """The config ``kernel`` ("fwd" or "bwd") runs with: ``fixed`` if set (kernel_options), the interpreter's on
    CPU, else the autotuned one for ``key`` = (patch_nums, row_bits, D, dtype, device), timed with ``run(config)``.
    """
    if fixed is not None:
        return fixed
    if interpreting():
        return INTERPRETER_FWD if kernel == "fwd" else INTERPRETER_BWD
    head_dim, device = key[2], key[4]
    candidates = fwd_candidates(head_dim) if kernel == "fwd" else bwd_candidates(head_dim)
    return pick((kernel,) + key, candidates, run, current_options().autotune, device)


def pick(key, candidates: Sequence, run: Callable, autotune: bool, device: torch.device):
    """The config to use for ``key``: the fastest candidate under ``run(config)`` (timed once), or the first.

    Tuning needs synchronisation, so it is skipped while a CUDA graph is being captured (the default is used
    and not remembered) and where autotuning is off.
    """
    if key in _chosen:
        return _chosen[key]
    if not autotune or device.type != "cuda" or interpreting():
        return candidates[0]
    if torch.cuda.is_current_stream_capturing():
        return candidates[0]
    times = {}
    for config in candidates:
        try:
            times[config] = _time_ms(lambda: run(config))
        except Exception as error:  # a config that does not compile or fit (e.g. shared memory) is skipped
            if "OutOfResources" not in type(error).__name__ and "out of resource" not in str(error):
                raise
    best = min(times, key=times.get)
    _chosen[key] = best
    _timings[key] = times
    return best


def tuned_configs() -> dict:
    """What the autotuner chose so far: key → (config, {candidate: median ms}), for benchmarks and notes."""
    return {key: (config, dict(_timings.get(key, {}))) for key, config in _chosen.items()}
