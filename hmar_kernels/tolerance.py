"""The one tolerance rule of the tests and the benchmarks (FlashAttention's).

A kernel's error against the golden result (the reference in float64 on the same rounded inputs) may be at most
2 × the baseline's error (the same reference computed in the kernel's dtype) + 2 × the rounding noise (what
storing the golden result in the kernel's dtype costs) + a floor of ``floor_ulps`` fp32 ulps at the golden's
largest magnitude (at least 1). The floor covers the kernels' fp32 accumulation and exp2/LSE recomputation and
results the baseline gets exactly (dQ = 0 when a query sees a single key); it is negligible next to fp16/bf16
rounding. The tolerance thus follows dtype, D and L with no table of magic numbers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

TEST_FLOOR_ULPS = 64  # up to ~8 ulps above the rest of the rule were seen on fp32 gradients


class Check(NamedTuple):
    error: float  # max |out - golden|; inf when out holds NaN or inf
    bound: float
    baseline_error: float
    rounding: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def error_bound(out: torch.Tensor, golden: torch.Tensor, baseline: torch.Tensor,
                floor_ulps: int = TEST_FLOOR_ULPS) -> Check:
    """The rule applied to ``out`` (see the module docstring)."""
    golden = golden.double()
    baseline_error = (baseline.double() - golden).abs().max().item()
    rounding = (golden.to(out.dtype).double() - golden).abs().max().item()
    floor = floor_ulps * torch.finfo(torch.float32).eps * max(1.0, golden.abs().max().item())
    bound = 2 * baseline_error + 2 * rounding + floor
    error = (out.double() - golden).abs().max().item() if torch.isfinite(out).all() else float("inf")
    return Check(error, bound, baseline_error, rounding)
