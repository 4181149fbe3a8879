"""Linear layer + cross-entropy over row chunks, so the (N, V) fp32 logits never exist all at once.

    ce_N = linear_cross_entropy(h_NC, weight_VC, bias_V, target_N)      # = F.cross_entropy(F.linear(h, W, b)
                                                                         #   .float(), target, reduction="none")
    ce_N, hit_N = linear_cross_entropy(h_NC, weight_VC, bias_V, target_N, return_hits=True)
                                                                         # hit: argmax of the row's logits == target

At d16, 256 px, B = 32 the head's logits are N × V = 21,760 × 4096 fp32 = 357 MB, plus as much again for their
gradient and the bf16 copies: the largest activations of the step. Here the forward keeps one (chunk, V) block at a
time and saves only the per-row log-sum-exp; the backward recomputes each chunk's logits (one extra N·C·V GEMM,
a third more head FLOPs, ≈ 2% of a d16 step's) and turns them into dh and fp32 accumulations of dW, db.

Rounding follows the unfused model under autocast: the matmul runs in the compute dtype (autocast's, when autocast
is on for h's device, else h's dtype), the logits round to it and are then upcast to fp32 for the softmax; dlogits
round to the compute dtype for the two backward GEMMs. Per-token weights (VAR's 1/L, HMAR's lognorm) are applied
by the caller to the returned (N,) losses, whose gradient may be anything.

``return_hits`` also gives, from each chunk's logits while they exist, whether the row's argmax is its target
(bool, not differentiable; for accuracy logs). Ties count as ``torch.argmax`` resolves them: the first (lowest)
index of the maximum wins, so a target tied with a lower class is a miss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_ROWS = 8192  # 8192 × 4096 fp32 = 128 MB of logits per chunk, ~a third of d16's at 256 px, B = 32


def _chunk_logits(h_nC, weight_VC, bias_V, compute_dtype) -> torch.Tensor:
    """(n, V) logits of one chunk in at least fp32, rounded through the compute dtype as the autocast head is."""
    bias = None if bias_V is None else bias_V.to(compute_dtype)
    logits = F.linear(h_nC.to(compute_dtype), weight_VC.to(compute_dtype), bias)
    return logits.to(torch.promote_types(compute_dtype, torch.float32))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_NC, weight_VC, bias_V, target_N, chunk_rows, compute_dtype, return_hits):
        loss_dtype = torch.promote_types(compute_dtype, torch.float32)  # fp32, or float64 for float64 inputs
        ce_N = torch.empty(h_NC.shape[0], dtype=loss_dtype, device=h_NC.device)
        lse_N = torch.empty_like(ce_N)
        hit_N = torch.empty(h_NC.shape[0], dtype=torch.bool, device=h_NC.device) if return_hits else None
        with torch.autocast(h_NC.device.type, enabled=False):
            for start in range(0, h_NC.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                logits_nV = _chunk_logits(h_NC[rows], weight_VC, bias_V, compute_dtype)
                lse_N[rows] = torch.logsumexp(logits_nV, dim=-1)
                ce_N[rows] = lse_N[rows] - logits_nV.gather(1, target_N[rows, None]).squeeze(1)
                if return_hits:
                    hit_N[rows] = logits_nV.argmax(dim=-1) == target_N[rows]
        ctx.save_for_backward(h_NC, weight_VC, bias_V, target_N, lse_N)
        ctx.chunk_rows, ctx.compute_dtype = chunk_rows, compute_dtype
        if not return_hits:
            return ce_N
        ctx.mark_non_differentiable(hit_N)
        return ce_N, hit_N

    @staticmethod
    def backward(ctx, dce_N, *_unused_dhit):
        h_NC, weight_VC, bias_V, target_N, lse_N = ctx.saved_tensors
        cd = ctx.compute_dtype
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        dh_NC = torch.empty_like(h_NC) if want_h else None
        acc = torch.promote_types(cd, torch.float32)
        dW_VC = torch.zeros(weight_VC.shape, dtype=acc, device=weight_VC.device) if want_w else None
        db_V = torch.zeros(weight_VC.shape[0], dtype=acc, device=weight_VC.device) if want_b else None
        weight_cd = weight_VC.to(cd)
        for start in range(0, h_NC.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            logits_nV = _chunk_logits(h_NC[rows], weight_VC, bias_V, cd)
            # d ce / d logits = softmax − onehot(target), times the upstream gradient of each row.
            dlogits_nV = logits_nV.sub_(lse_N[rows, None]).exp_()
            dlogits_nV.scatter_add_(1, target_N[rows, None], dlogits_nV.new_full((dlogits_nV.shape[0], 1), -1.0))
            dlogits_nV.mul_(dce_N[rows, None])
            dlogits_cd = dlogits_nV.to(cd)
            if want_h:
                dh_NC[rows] = (dlogits_cd @ weight_cd).to(h_NC.dtype)
            if want_w:
                dW_VC += (dlogits_cd.t() @ h_NC[rows].to(cd)).to(acc)
            if want_b:
                db_V += dlogits_cd.to(acc).sum(0)
        dW_VC = None if dW_VC is None else dW_VC.to(weight_VC.dtype)
        db_V = None if db_V is None else db_V.to(bias_V.dtype)
        return dh_NC, dW_VC, db_V, None, None, None, None


def _validate(h_NC, weight_VC, bias_V, target_N, chunk_rows):
    for name, t in (("h", h_NC), ("weight", weight_VC), ("target", target_N)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if h_NC.dim() != 2 or weight_VC.dim() != 2 or h_NC.shape[1] != weight_VC.shape[1]:
        raise ValueError(f"h must be (N, C) and weight (V, C) with the same C, got {tuple(h_NC.shape)} and "
                         f"{tuple(weight_VC.shape)}")
    if bias_V is not None and tuple(bias_V.shape) != (weight_VC.shape[0],):
        raise ValueError(f"bias must be (V,) = ({weight_VC.shape[0]},), got {tuple(bias_V.shape)}")
    if target_N.shape != (h_NC.shape[0],):
        raise ValueError(f"target must be (N,) = ({h_NC.shape[0]},), got {tuple(target_N.shape)}")
    if target_N.dtype != torch.long:
        raise TypeError(f"target must be int64 class indices, got {target_N.dtype}")
    if not h_NC.is_floating_point() or not weight_VC.is_floating_point():
        raise TypeError(f"h and weight must be floating point, got {h_NC.dtype} and {weight_VC.dtype}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")


def linear_cross_entropy(h_NC: torch.Tensor, weight_VC: torch.Tensor, bias_V: torch.Tensor | None,
                         target_N: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS, *, return_hits: bool = False):
    """Per-row cross-entropy (N,) fp32 (float64 for float64 inputs) of the logits ``h @ weight.T + bias`` against
    ``target`` (int64 in [0, V)), computed ``chunk_rows`` rows at a time; differentiable in h, weight and bias.
    With ``return_hits``: ``(ce_N, hit_N)``, hit_N (N,) bool = ``logits.argmax(-1) == target`` (not differentiable).

    Under autocast the matmuls run in autocast's dtype (as an autocast ``nn.Linear`` head does).
    """
    _validate(h_NC, weight_VC, bias_V, target_N, chunk_rows)
    if not isinstance(return_hits, bool):
        raise TypeError(f"return_hits must be a bool, got {type(return_hits).__name__}")
    device_type = h_NC.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(h_NC.dtype, weight_VC.dtype)
    return _LinearCrossEntropy.apply(h_NC, weight_VC, bias_V, target_N, chunk_rows, compute_dtype, return_hits)
