"""Zero-shot editing with HMAR: inpainting, outpainting and class-conditional region editing.

The image is tokenised at every scale. Sampling then runs scale by scale as usual, except that at each scale
the tokens outside the user's mask are forced to the image's own tokens, and the tokens inside are regenerated:
proposed by the next-scale pass, then re-predicted by ``refine_steps`` masked-prediction passes that see the
scale's kept tokens and the context ↓f̂ of the (edited) coarser scales, the most confident ones finalised first.
No finetuning: the masked-prediction path was trained exactly for "predict these tokens given the others".

A token of scale k (a p_k×p_k grid cell) is regenerated when at least ``coverage`` of its cell is inside the
mask. Tokens outside are never changed, but a regenerated coarse token is bicubic-upsampled into f̂ and so
touches pixels a little beyond its cell: coverage near 1 keeps the outside closest to the original.

    out = inpaint(hmar, vqvae, image, mask, labels=207, seed=0)      # image (B,3,R,R) in [0,1], mask 1 = regenerate
    out = outpaint(hmar, vqvae, image, box=(64, 64, 128, 128))       # image shrunk into box, the rest generated
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .pairing import check_fit
from .progress import progress_ticks, validate_progress
from .quant import area
from .sampling import (OFFICIAL_REFINE_GUIDANCE_FACTOR, generate, labels_tensor, make_generator, precision_context,
                       refine)


def token_masks(mask_B1HW: torch.Tensor, patch_nums: Sequence[int], coverage: float = 0.5) -> list[torch.Tensor]:
    """Per scale, (B, p_k²) bool: cells whose area inside the mask is at least ``coverage``."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    return [(area(mask_B1HW.float(), p) >= coverage - 1e-6).flatten(1) for p in patch_nums]


def _validate_image_and_mask(image, mask, side: int):
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a (B, 3, {side}, {side}) tensor in [0, 1], got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if tuple(image.shape[-2:]) != (side, side):
        raise ValueError(f"image is {tuple(image.shape[-2:])} but the model's schedule makes {side}×{side} images")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[1] != 1 \
            or tuple(mask.shape[-2:]) != (side, side) or mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"mask must be (1 or B, 1, {side}, {side}) with 1 = regenerate, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    return mask.expand(image.shape[0], 1, side, side)


@torch.no_grad()
def inpaint(model, vqvae, image: torch.Tensor, mask: torch.Tensor, labels=None, *, cfg: float = 1.5,
            top_k: int = 900, top_p: float = 0.96, seed: Optional[int] = None, refine_steps: int = 4,
            coverage: float = 0.5, refine_guidance: Optional[float] = None, dtype: Optional[torch.dtype] = None,
            return_indices: bool = False, progress=False):
    """Regenerate the masked region of ``image`` (B, 3, R, R) in [0, 1]; ``mask`` (1|B, 1, R, R), 1 = regenerate.

    labels: class(es) of the regenerated content (int, list, tensor); None → unconditional (null class).
    refine_steps: masked-prediction passes per scale (0: next-scale proposals only).
    refine_guidance: CFG factor t inside those passes (None: cfg·1e-6 as upstream's sampler).
    progress: True shows a tqdm bar (one step per scale, one for decoding); a callable gets the step counts.
    Returns images in [0, 1] (and the token maps when ``return_indices``).
    """
    if not hasattr(model, "mask_logits"):
        raise TypeError(f"editing needs the composite HMAR model (masked-prediction path), got {type(model).__name__}")
    if refine_steps < 0:
        raise ValueError(f"refine_steps must be ≥ 0, got {refine_steps}")
    check_fit(model.cfg, vqvae.cfg)
    validate_progress(progress)
    device, patch_nums = model.lvl_1L.device, model.patch_nums
    mask = _validate_image_and_mask(image, mask, vqvae.cfg.downsample * patch_nums[-1]).to(device)
    B = image.shape[0]
    generator = make_generator(seed, device)
    label_B = labels_tensor(model.num_classes if labels is None else labels, B, model.num_classes, generator, device)
    guidance = cfg * OFFICIAL_REFINE_GUIDANCE_FACTOR if refine_guidance is None else refine_guidance
    original = vqvae.img_to_indices(image.to(device).float() * 2 - 1, patch_nums)  # fp32 tokenisation
    masks = token_masks(mask, patch_nums, coverage)
    with progress_ticks(progress, len(patch_nums) + 1, "editing") as tick, precision_context(device, dtype):

        def hook(si, idx, logits, f_hat, cond_2BD, lvl_pos):
            masked = masks[si]
            idx = torch.where(masked, idx, original[si])
            if si == 0 or refine_steps == 0:
                return idx, True
            count = masked.sum(dim=1)
            remaining = [count * (refine_steps - s) // refine_steps for s in range(1, refine_steps + 1)]
            return refine(model, vqvae.quantize, si, idx, masked, remaining, f_hat, cond_2BD, lvl_pos,
                          guidance=guidance, top_k=top_k, top_p=top_p, generator=generator), True

        f_hat, indices = generate(model, vqvae.quantize, label_B, cfg=cfg, top_k=top_k, top_p=top_p,
                                  generator=generator, scale_hook=hook, on_scale=tick)
        images = vqvae.fhat_to_img(f_hat).float().add_(1).mul_(0.5)
        if tick is not None:
            tick(1)
    return (images, indices) if return_indices else images


def edit_class(model, vqvae, image, mask, labels, **kwargs):
    """Class-conditional editing: regenerate the masked region as class ``labels`` (see ``inpaint``)."""
    if labels is None:
        raise ValueError("edit_class needs the target class(es) in labels")
    return inpaint(model, vqvae, image, mask, labels, **kwargs)


def outpaint_canvas(image: torch.Tensor, side: int, box: Sequence[int], fill: float = 0.5
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(canvas (B, 3, side, side) with ``image`` resized into box = (top, left, height, width), mask = 1 outside)."""
    if len(box) != 4:
        raise ValueError(f"box must be (top, left, height, width), got {tuple(box)}")
    top, left, h, w = (int(v) for v in box)
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > side or left + w > side:
        raise ValueError(f"box (top={top}, left={left}, height={h}, width={w}) must lie inside the "
                         f"{side}×{side} canvas")
    B = image.shape[0]
    canvas = image.new_full((B, 3, side, side), fill)
    canvas[:, :, top:top + h, left:left + w] = F.interpolate(image.float(), size=(h, w), mode="bicubic",
                                                             antialias=True).clamp(0, 1)
    mask = image.new_ones(1, 1, side, side)
    mask[:, :, top:top + h, left:left + w] = 0
    return canvas, mask


def outpaint(model, vqvae, image: torch.Tensor, box: Sequence[int], labels=None, **kwargs):
    """Place ``image`` (B, 3, h, w) in [0, 1] into ``box`` of a model-size canvas and generate the rest."""
    side = vqvae.cfg.downsample * model.patch_nums[-1]
    canvas, mask = outpaint_canvas(image, side, box)
    return inpaint(model, vqvae, canvas, mask, labels, **kwargs)
