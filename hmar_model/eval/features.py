"""Inception features of uint8 images, batched on the network's device.

    feats = extract_features(batches, net)     # batches of (B, H, W, 3) uint8 → Features (float64 numpy arrays)

Preprocessing matches the ADM evaluator's TensorFlow graph (the one published ImageNet FIDs are computed with):
float pixels in [0, 255] are resized to 299×299 with TensorFlow 1's ``ResizeBilinear`` (align_corners=False,
*without* half-pixel centres: source coordinate = destination × in/out, right/bottom neighbour clamped), then
mapped to (x − 128) / 128. torch-fidelity does the same; pytorch-fid's ``F.interpolate`` (half-pixel centres)
does not and gives slightly different FIDs for images that are not 299 px.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

INCEPTION_SIZE = 299


class Features(NamedTuple):
    pool: np.ndarray                # (N, 2048)
    spatial: np.ndarray             # (N, 2023)
    logits: Optional[np.ndarray]    # (N, 1008), None without classifier weights


def _tf1_axis_weights(size_in: int, size_out: int, like: torch.Tensor) -> tuple:
    """Indices (lo, hi) and weight of hi for one axis of TF1's legacy bilinear resize."""
    src = torch.arange(size_out, device=like.device, dtype=torch.float64) * (size_in / size_out)
    lo = src.floor().long()
    frac = (src - lo).to(like.dtype)
    return lo, (lo + 1).clamp_(max=size_in - 1), frac


def resize_bilinear_tf1(x_BCHW: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TensorFlow 1 ``ResizeBilinear(align_corners=False)`` of float images to size×size (an identity at size)."""
    H, W = x_BCHW.shape[-2:]
    if (H, W) == (size, size):
        return x_BCHW
    ylo, yhi, fy = _tf1_axis_weights(H, size, x_BCHW)
    xlo, xhi, fx = _tf1_axis_weights(W, size, x_BCHW)
    left, right = x_BCHW[..., xlo], x_BCHW[..., xhi]                   # (B, C, H, size)
    rows = left + (right - left) * fx                                   # along x first, as TF: top and bottom rows
    top, bottom = rows[..., ylo, :], rows[..., yhi, :]                  # (B, C, size, size)
    return top + (bottom - top) * fy[:, None]


def preprocess(images_BHWC: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, 299, 299) in [−1, 1) as the TF graph sees it."""
    x = images_BHWC.permute(0, 3, 1, 2).float()
    return (resize_bilinear_tf1(x) - 128) / 128


def extract_features(batches: Iterable[np.ndarray], net: torch.nn.Module, *, total: Optional[int] = None,
                     desc: str = "features", progress: bool = True, source: str = "images") -> Features:
    """Features of every image in ``batches`` (uint8 (B, H, W, 3) numpy arrays), in order.

    Runs in strict fp32 (no TF32: features feed covariances and k-NN radii). Raises ValueError naming
    ``source`` if the network returns NaN/inf.
    """
    device = next(net.parameters()).device
    pools, spatials, logits = [], [], []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for batch in batches:
                x = torch.from_numpy(np.ascontiguousarray(batch))
                if device.type == "cuda":
                    x = x.pin_memory().to(device, non_blocking=True)
                out = net(preprocess(x))
                pools.append(out["pool"].cpu())
                spatials.append(out["spatial"].cpu())
                if out["logits"] is not None:
                    logits.append(out["logits"].cpu())
                bar.update(len(batch))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        bar.close()
    if not pools:
        raise ValueError(f"{source}: no images")
    feats = Features(torch.cat(pools).double().numpy(), torch.cat(spatials).double().numpy(),
                     torch.cat(logits).double().numpy() if logits else None)
    for name, array in zip(feats._fields, feats):
        if array is not None and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).any(axis=1).sum())
            raise ValueError(f"{source}: the Inception network returned NaN/inf {name} features for {bad} "
                             "image(s); check the weights file and the images")
    return feats
