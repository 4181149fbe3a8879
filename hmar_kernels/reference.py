"""Reference multi-scale attention in plain PyTorch: the ground truth of every test.

Runs on any device and dtype (float64 included) and is differentiable through autograd. It works scale by
scale: queries of scale i attend the concatenated keys of the scales that ``row_bits[i]`` allows, so it never
materialises an L×L mask (a different algorithm from the dense-mask check in the tests).
"""
from __future__ import annotations

import torch

from .tiles import scale_bounds


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch_nums: tuple[int, ...],
                        row_bits: tuple[int, ...], softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: (B, H, L, D). Returns out (B, H, L, D) in q's dtype and lse (B, H, L), natural-log units.

    Everything is computed in the inputs' dtype: call it with float64 tensors for a golden result.
    """
    starts, sizes, _ = scale_bounds(patch_nums)
    outs, lses = [], []
    for i, (qs, qn) in enumerate(zip(starts, sizes)):
        keys = [j for j in range(len(sizes)) if (row_bits[i] >> j) & 1]
        k_i = torch.cat([k[:, :, starts[j]:starts[j] + sizes[j]] for j in keys], dim=2)  # (B, H, Lk, D)
        v_i = torch.cat([v[:, :, starts[j]:starts[j] + sizes[j]] for j in keys], dim=2)
        scores = (q[:, :, qs:qs + qn] @ k_i.transpose(-1, -2)) * softmax_scale  # (B, H, n_i, Lk)
        lse = torch.logsumexp(scores.float() if scores.dtype != torch.float64 else scores, dim=-1)
        probs = torch.softmax(scores, dim=-1)
        outs.append(probs @ v_i)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2).to(torch.float64 if q.dtype == torch.float64
                                                           else torch.float32)
