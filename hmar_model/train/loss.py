"""Training losses from per-token cross-entropy and hits, one function per stage, and per-scale statistics.

    ce_BL, hit_BL = ce_and_hits(logits_BLV, target_BL)                  # unfused: from the (B, L, V) logits
    ce_BL, hit_BL = model.head_cross_entropy(x_BLC, cond_BD, target_BL, return_hits=True)   # fused head + CE
    loss, ce_BL, hit_BL = next_scale_loss(ce_BL, hit_BL, weight_L)      # Σ_t w_t·CE_t, mean over batch
    loss, ce_BL, hit_BL = masked_loss(ce_BL, hit_BL, masked_BL)         # mean CE over masked tokens

The stage losses return the per-token cross-entropy (detached) and hits (argmax == target) for the per-scale
log. Hits resolve ties as ``torch.argmax`` does (the first index of the maximum), in both paths.

Per-scale weights (spec §4.2, Appendix B), each a (L,) tensor of per-token weights:
* "uniform" (VAR): 1/L for every token;
* "equal": 1/n_k for the tokens of scale k (every scale sums to 1);
* "lognorm" (HMAR): π_k/n_k with π a standard-normal pdf over mirrored, standardised side ratios, Σπ = 1.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..blocks import at_least_fp32


def scale_weights(patch_nums: Sequence[int], kind: str) -> list[float]:
    """Total loss weight of each scale (the per-token weight times n_k)."""
    K = len(patch_nums)
    if kind == "uniform":
        L = sum(p * p for p in patch_nums)
        return [p * p / L for p in patch_nums]
    if kind == "equal":
        return [1.0] * K
    if kind != "lognorm":
        raise ValueError(f"loss weights must be 'lognorm', 'uniform' or 'equal', got {kind!r}")
    if K == 1:
        return [1.0]
    last = patch_nums[-1]
    ratios = [p / last for p in patch_nums]
    mean = sum(ratios) / K
    std = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (K - 1))
    # z of scale k uses the ratio of scale K−1−k (mirrored order), as upstream
    pdf = [math.exp(-0.5 * ((patch_nums[K - 1 - k] / last - mean) / std) ** 2) / math.sqrt(2 * math.pi)
           for k in range(K)]
    total = sum(pdf)
    return [x / total for x in pdf]


def token_weights(patch_nums: Sequence[int], kind: str) -> torch.Tensor:
    """(L,) float32 per-token weights: scale k's total weight spread evenly over its n_k tokens."""
    per_scale = scale_weights(patch_nums, kind)
    return torch.cat([torch.full((p * p,), w / (p * p), dtype=torch.float64) for p, w in zip(patch_nums, per_scale)]
                     ).float()


def ce_and_hits(logits_BLV: torch.Tensor, target_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ce_BL, hit_BL) of (B, L, V) logits: per-token cross-entropy in at least fp32 (differentiable) and
    ``argmax == target`` (bool; a tie goes to the first index)."""
    ce_BL = F.cross_entropy(at_least_fp32(logits_BLV).flatten(0, 1), target_BL.flatten(), reduction="none"
                            ).view_as(target_BL)
    hit_BL = logits_BLV.detach().argmax(-1) == target_BL
    return ce_BL, hit_BL


def next_scale_loss(ce_BL: torch.Tensor, hit_BL: torch.Tensor, weight_L: torch.Tensor):
    """Next-scale loss mean_b Σ_t w_t·ce[b, t] → (loss, ce_BL detached, hit_BL)."""
    loss = ce_BL.mul(weight_L).sum(1).mean()
    return loss, ce_BL.detach(), hit_BL


def masked_loss(ce_BL: torch.Tensor, hit_BL: torch.Tensor, masked_BL: torch.Tensor):
    """Masked-prediction loss: mean CE over the masked positions only → (loss, ce_BL detached, hit_BL).

    masked_BL (B, L) bool over the full sequence (the start token is never masked). An empty mask is refused
    when the mask is on the CPU; a device mask is not checked here (that would sync the host every step): the
    trainer's mask draw masks at least one token of every scale ≥ 1."""
    if masked_BL.device.type == "cpu" and not masked_BL.any():
        raise ValueError("masked_loss: no position is masked (the loss would be empty)")
    counted_BL = masked_BL.to(ce_BL.dtype)  # a product, not ce_BL[masked_BL]: indexing syncs the host
    loss = (ce_BL * counted_BL).sum() / counted_BL.sum()
    return loss, ce_BL.detach(), hit_BL


class ScaleStats:
    """Per-scale sums of CE, hits and counted tokens over a logging window, kept on the device (no host sync)."""

    def __init__(self, patch_nums: Sequence[int], device):
        self.patch_nums = tuple(patch_nums)
        self.level_L = torch.cat([torch.full((p * p,), k, dtype=torch.long) for k, p in enumerate(patch_nums)]
                                 ).to(device)
        self.sums_K3 = torch.zeros(len(patch_nums), 3, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, ce_BL: torch.Tensor, hit_BL: torch.Tensor, counted_BL: torch.Tensor | None = None):
        counted = torch.ones_like(ce_BL) if counted_BL is None else counted_BL.to(ce_BL.dtype)
        values_BL3 = torch.stack((ce_BL * counted, hit_BL.to(ce_BL.dtype) * counted, counted), dim=-1).double()
        self.sums_K3.index_add_(0, self.level_L, values_BL3.sum(0))

    def reduce_and_reset(self, all_reduce=None) -> dict[str, list[float | None]]:
        """{'scale_loss': [K], 'scale_acc': [K]} (None for a scale with no counted token); clears the sums."""
        sums = self.sums_K3.clone()
        if all_reduce is not None:
            all_reduce(sums)
        self.sums_K3.zero_()
        ce, hits, count = sums.cpu().unbind(1)
        out = {"scale_loss": [], "scale_acc": []}
        for c, h, n in zip(ce.tolist(), hits.tolist(), count.tolist()):
            out["scale_loss"].append(c / n if n else None)
            out["scale_acc"].append(h / n if n else None)
        return out
