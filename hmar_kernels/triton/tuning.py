"""Launch configurations of the Triton kernels and a small autotuner.

Triton's own ``@triton.autotune`` cannot be used: the tile metadata (which KV tiles each Q tile visits) depends
on the tile shape, so every candidate needs its own TileMask. ``pick`` times the candidates once per key with
CUDA events and remembers the fastest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class FwdConfig:
    block_m: int  # Q rows per program
    block_n: int  # keys per inner iteration
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class BwdConfig:
    block_m1: int  # Q rows per inner iteration of a dK/dV program
    block_n1: int  # keys per dK/dV program
    block_m2: int  # Q rows per dQ program
    block_n2: int  # keys per inner iteration of a dQ program
    num_warps: int
    num_stages: int


# Small tiles for the CPU interpreter (tests at small shapes): many tile boundaries inside few tokens.
INTERPRETER_FWD = FwdConfig(16, 16, 1, 1)
INTERPRETER_BWD = BwdConfig(16, 16, 16, 16, 1, 1)


def fwd_candidates(head_dim: int) -> Sequence[FwdConfig]:
    """Hopper-minded forward configs, default first.

    Resources for sm_90, bf16 (bench/triton_registers.py, Triton 3.9): none spills; registers per thread at D=64
    (128, 64, 8 warps) 107, (128, 128, 8) 169, (128, 64, 4) 201, (64, 64, 4) 107; (128, 128, 4) hits 255.
    At D=128: (128, 64, 8) 151 with 96 KiB of shared memory, (128, 32, 8) 115, (64, 64, 8) 121.
    """
    if head_dim <= 64:
        return (FwdConfig(128, 64, 8, 4), FwdConfig(128, 128, 8, 3), FwdConfig(128, 64, 4, 3),
                FwdConfig(64, 64, 4, 3))
    return (FwdConfig(128, 64, 8, 3), FwdConfig(128, 32, 8, 3), FwdConfig(64, 64, 8, 3), FwdConfig(64, 32, 4, 3))


def bwd_candidates(head_dim: int) -> Sequence[BwdConfig]:
    """Backward configs, default first: narrow Q slices for dK/dV, narrow K slices for dQ (as in FA2).

    Registers at D=64: (64, 128, 128, 64, 8 warps) 192, (32, 128, 128, 32, 8) 128, (32, 64, 64, 32, 4) 128,
    (64, 64, 64, 64, 4) 177; at D=128: (32, 64, 64, 32, 8) 169, (32, 128, 128, 32, 8) 199 (2 stages),
    (64, 128, 128, 64, 8) 235 with 129 KiB of shared memory (2 stages). No candidate spills.
    """
    if head_dim <= 64:
        return (BwdConfig(64, 128, 128, 64, 8, 3), BwdConfig(32, 128, 128, 32, 8, 3),
                BwdConfig(32, 64, 64, 32, 4, 3), BwdConfig(64, 64, 64, 64, 4, 3))
    return (BwdConfig(32, 64, 64, 32, 8, 3), BwdConfig(32, 128, 128, 32, 8, 2), BwdConfig(64, 128, 128, 64, 8, 2),
            BwdConfig(64, 64, 64, 64, 8, 2))


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
