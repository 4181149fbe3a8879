"""Sampling: the scale loop shared by VAR, HMAR-NSP and HMAR, HMAR's masked refinement, and their pieces.

    images = sample(model, vqvae, labels=[207, 360], cfg=1.5, top_k=900, top_p=0.96, seed=0)   # (B, 3, R, R) in [0, 1]

Per scale k (0-based, K scales): the model predicts scale k's n_k tokens (VAR: attending its KV cache; HMAR: this
scale's tokens only), logits are mixed with the unconditional half as (1 + t)·cond − t·uncond with the linear
ramp t = cfg·k/(K − 1), filtered in place by top-k then top-p, and sampled with ``torch.multinomial`` on the
call's generator. HMAR then optionally refines the scale with masked-prediction passes (``mask_schedule``), and
the scale is committed to f̂. Images are ``(decoder(f̂) + 1) / 2``.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Optional, Sequence

import torch

from .schedules import default_mask_schedule, no_refinement_schedule, validate_mask_schedule

OFFICIAL_REFINE_GUIDANCE_FACTOR = 1e-6  # upstream hard-codes t = cfg·1e-6 in refinement passes (≈ no guidance)


# ---- pieces ----
def guidance_ratio(si: int, num_scales: int) -> float:
    return si / (num_scales - 1) if num_scales > 1 else 0.0


def cfg_mix(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t)·cond − t·uncond; the batch holds the conditional half first."""
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]


def filter_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """In place: −inf below the k-th largest logit (ties kept), then drop the least likely tokens whose total
    probability is ≤ 1 − top_p (the most likely token always stays). ``top_k ≤ 0`` / ``top_p ≤ 0`` disable."""
    V = logits_BlV.shape[-1]
    if top_k > 0:
        kth = logits_BlV.topk(min(top_k, V), dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        ascending, order = logits_BlV.sort(dim=-1, descending=False)
        drop_sorted = ascending.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits_BlV.masked_fill_(drop_sorted.scatter(-1, order, drop_sorted), -torch.inf)
    return logits_BlV


def sample_tokens(logits_BlV: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One multinomial draw per position, (B, l) int64."""
    B, l, V = logits_BlV.shape
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator).view(B, l)


def gumbel_soft_codes(filtered_logits_BlV: torch.Tensor, ratio: float, codebook_VC: torch.Tensor,
                      generator: Optional[torch.Generator]) -> torch.Tensor:
    """VAR's "more_smooth" visualisation: a Gumbel-softmax mixture of codes instead of the sampled code, with
    temperature max(0.27·(1 − 0.95·ratio), 0.005) on the filtered logits ×(1 + ratio). (B, l, Cvae)."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    noise = -torch.empty_like(filtered_logits_BlV).exponential_(generator=generator).log()
    weights = ((filtered_logits_BlV * (1 + ratio) + noise) / tau).softmax(dim=-1)
    return weights @ codebook_VC.to(weights.dtype)


def probability_of(logits_BlV: torch.Tensor, idx_Bl: torch.Tensor) -> torch.Tensor:
    """softmax(logits) at the chosen tokens, (B, l)."""
    return logits_BlV.softmax(dim=-1).gather(-1, idx_Bl.unsqueeze(-1)).squeeze(-1)


def least_confident(prob_Bn: torch.Tensor, candidates_Bn: torch.Tensor, count_B: torch.Tensor) -> torch.Tensor:
    """Bool (B, n): the ``count_B[b]`` lowest-probability positions among ``candidates`` of every sample."""
    score = prob_Bn.masked_fill(~candidates_Bn, torch.inf)
    order = score.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order))
    return rank < count_B.unsqueeze(1)


# ---- the scale loop ----
ScaleHook = Callable[..., torch.Tensor]


@torch.no_grad()
def generate(model, quantizer, label_B: torch.Tensor, *, cfg: float, top_k: int, top_p: float,
             generator: Optional[torch.Generator], more_smooth: bool = False, scale_hook: Optional[ScaleHook] = None
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run every scale; returns (f̂ (B, Cvae, P, P) fp32, token maps [(B, n_k)]).

    ``scale_hook(si, idx, filtered_logits, f_hat, cond_2BD, lvl_pos)`` may replace a scale's tokens before they
    are committed (HMAR refinement, editing); it returns (idx, refined) with refined telling whether it changed
    anything (Gumbel smoothing is then skipped for that scale, its logits no longer describe the tokens).
    """
    patch_nums, K, B = model.patch_nums, len(model.patch_nums), label_B.shape[0]
    P = patch_nums[-1]
    label_2B = torch.cat((label_B, torch.full_like(label_B, model.num_classes)))
    cond_2BD = model.class_emb(label_2B)
    lvl_pos = model.lvl_pos()
    tokens = model.start_tokens(cond_2BD, lvl_pos)
    f_hat = quantizer.embedding.weight.new_zeros(B, quantizer.channels, P, P)  # fp32 accumulation
    state = model.inference_state()
    indices = []
    for si, p in enumerate(patch_nums):
        ratio = guidance_ratio(si, K)
        logits_BlV = filter_top_k_top_p_(cfg_mix(model.next_scale_logits(tokens, cond_2BD, state), cfg * ratio),
                                         top_k, top_p)
        idx = sample_tokens(logits_BlV, generator)
        refined = False
        if scale_hook is not None:
            idx, refined = scale_hook(si, idx, logits_BlV, f_hat, cond_2BD, lvl_pos)
        if more_smooth and not refined:
            codes = gumbel_soft_codes(logits_BlV, ratio, quantizer.embedding.weight, generator)
            h = codes.transpose(1, 2).reshape(B, quantizer.channels, p, p)
        else:
            h = quantizer.lookup(idx, p)
        f_hat, nxt = quantizer.next_autoregressive_input(si, patch_nums, f_hat, h)
        indices.append(idx)
        if si < K - 1:
            begin, end = model.scale_ranges[si + 1]
            tokens = (model.word_tokens(nxt.flatten(2).transpose(1, 2)) + lvl_pos[:, begin:end]).repeat(2, 1, 1)
    return f_hat, indices


def refine(model, quantizer, si: int, idx_Bn: torch.Tensor, masked_Bn: torch.Tensor,
           remaining: Sequence[torch.Tensor], f_hat: torch.Tensor, cond_2BD: torch.Tensor, lvl_pos: torch.Tensor,
           *, guidance: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """Masked-prediction passes over scale si of an HMAR model (f̂ holds scales < si and is not modified).

    Pass s re-samples the ``masked`` positions given the context ↓f̂ and the scale's unmasked tokens; then only
    the ``remaining[s][b]`` least confident of them stay masked for pass s + 1 (the last entry must be 0).
    ``guidance`` is the CFG factor t of these passes; with t = 0 the unconditional half is not computed.
    """
    patch_nums, p = model.patch_nums, model.patch_nums[si]
    begin, end = model.scale_ranges[si]
    B = idx_Bn.shape[0]
    cond = cond_2BD if guidance != 0 else cond_2BD[:B]
    for step, count_B in enumerate(remaining):
        ctx, own = quantizer.next_mask_input(si, patch_nums, f_hat, quantizer.lookup(idx_Bn, p))
        tokens = model.mask_tokens(ctx.flatten(2).transpose(1, 2), own.flatten(2).transpose(1, 2), masked_Bn)
        tokens = tokens + lvl_pos[:, begin:end]
        logits = model.mask_logits(tokens.repeat(2, 1, 1) if guidance != 0 else tokens, cond)
        logits = filter_top_k_top_p_(cfg_mix(logits, guidance) if guidance != 0 else logits, top_k, top_p)
        new = sample_tokens(logits, generator)
        idx_Bn = torch.where(masked_Bn, new, idx_Bn)
        if step == len(remaining) - 1:
            break
        masked_Bn = least_confident(probability_of(logits, idx_Bn), masked_Bn, count_B)
    return idx_Bn


def refinement_hook(model, quantizer, schedule, *, cfg: float, refine_guidance: Optional[float], top_k: int,
                    top_p: float, generator) -> ScaleHook:
    """HMAR's confidence-based refinement: keep the schedule[si][0] most confident proposed tokens, then each
    masked pass finalises schedule[si][s] more."""
    guidance = cfg * OFFICIAL_REFINE_GUIDANCE_FACTOR if refine_guidance is None else refine_guidance

    def hook(si, idx, logits, f_hat, cond_2BD, lvl_pos):
        counts = schedule[si]
        if len(counts) == 1 or idx.shape[1] == 1:
            return idx, False
        B, n = idx.shape
        left = [sum(counts[s + 1:]) for s in range(1, len(counts))]  # still masked after each pass
        full = lambda c: torch.full((B,), c, device=idx.device)  # noqa: E731
        masked = least_confident(probability_of(logits, idx), torch.ones_like(idx, dtype=torch.bool),
                                 full(sum(counts[1:])))
        return refine(model, quantizer, si, idx, masked, [full(c) for c in left], f_hat, cond_2BD, lvl_pos,
                      guidance=guidance, top_k=top_k, top_p=top_p, generator=generator), True
    return hook


# ---- public entry point ----
def make_generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    if seed is None:
        return None
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def labels_tensor(labels, num_images: Optional[int], num_classes: int, generator, device) -> torch.Tensor:
    """int (all the same; negative → the null class), sequence/tensor of ints, or None (uniformly random)."""
    if labels is None:
        if num_images is None:
            raise ValueError("give labels or num_images (with labels=None the classes are drawn at random)")
        uniform = torch.ones(num_classes, device=device)
        return torch.multinomial(uniform, num_images, replacement=True, generator=generator)
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        if num_images is None:
            raise ValueError("labels is a single class: give num_images too")
        value = num_classes if labels < 0 else int(labels)
        labels = [value] * num_images
    label_B = torch.as_tensor(labels, device=device).long().view(-1)
    if num_images is not None and label_B.numel() != num_images:
        raise ValueError(f"got {label_B.numel()} labels but num_images = {num_images}")
    if label_B.numel() == 0 or label_B.min() < 0 or label_B.max() > num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}] ({num_classes} = unconditional), got "
                         f"{label_B.tolist()}")
    return label_B


def precision_context(device, dtype):
    """autocast to bf16/fp16, or nothing for fp32 (the official HMAR numerics)."""
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    return torch.autocast(torch.device(device).type, dtype=dtype)


def resolve_mask_schedule(model, mask_schedule):
    """"default" → the official schedule of the model's resolution (HMAR) or none (VAR/NSP); None → none."""
    has_mask_path = hasattr(model, "mask_logits")
    if isinstance(mask_schedule, str):
        if mask_schedule != "default":
            raise ValueError(f"mask_schedule must be 'default', None or a per-scale list, got {mask_schedule!r}")
        return default_mask_schedule(model.patch_nums) if has_mask_path else no_refinement_schedule(model.patch_nums)
    if mask_schedule is None:
        return no_refinement_schedule(model.patch_nums)
    schedule = validate_mask_schedule(mask_schedule, model.patch_nums)
    if not has_mask_path and any(len(c) > 1 for c in schedule):
        raise ValueError(f"mask_schedule asks for refinement but {type(model).__name__} has no masked-prediction "
                         "path; use the composite HMAR model (build_hmar / load an hmar-d*.pth)")
    return schedule


def sample(model, vqvae, labels=None, *, num_images: Optional[int] = None, cfg: float = 1.5, top_k: int = 900,
           top_p: float = 0.96, seed: Optional[int] = None, mask_schedule="default",
           refine_guidance: Optional[float] = None, more_smooth: bool = False, dtype: Optional[torch.dtype] = None,
           decode_chunk: Optional[int] = None, return_indices: bool = False):
    """Class-conditional images (B, 3, R, R) in [0, 1] from VAR, HMAR-NSP or the composite HMAR model.

    Args:
        labels: int (with num_images), list/tensor of classes, or None (random classes); 1000 = unconditional.
        cfg: classifier-free guidance at the last scale (linear ramp from 0 at the first scale).
        top_k, top_p: filtering of the logits (≤ 0 disables).
        seed: seeds a generator on the model's device; same seed and settings → same images.
        mask_schedule: HMAR refinement, "default" (official schedule of the resolution), None (no refinement)
            or one count list per scale, e.g. [[1], [1, 3], [1, 1, 2, 5], [16], ...] (validated).
        refine_guidance: the CFG factor t of refinement passes; None reproduces upstream (t = cfg·1e-6), 0 skips
            the unconditional half.
        more_smooth: Gumbel-smoothed code maps (VAR's visualisation trick), on unrefined scales.
        dtype: None/float32, or torch.bfloat16 / torch.float16 autocast.
        decode_chunk: decode this many images at a time (bounds the decoder's memory at 1024 px).
        return_indices: also return the token maps [(B, n_k)].
    """
    device = model.lvl_1L.device
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be finite, got {cfg}")
    schedule = resolve_mask_schedule(model, mask_schedule)
    generator = make_generator(seed, device)
    label_B = labels_tensor(labels, num_images, model.num_classes, generator, device)
    hook = None
    if any(len(c) > 1 for c in schedule):
        hook = refinement_hook(model, vqvae.quantize, schedule, cfg=cfg, refine_guidance=refine_guidance,
                               top_k=top_k, top_p=top_p, generator=generator)
    with torch.no_grad(), precision_context(device, dtype):
        f_hat, indices = generate(model, vqvae.quantize, label_B, cfg=cfg, top_k=top_k, top_p=top_p,
                                  generator=generator, more_smooth=more_smooth, scale_hook=hook)
        images = vqvae.fhat_to_img(f_hat, decode_chunk).float().add_(1).mul_(0.5)
    return (images, indices) if return_indices else images
