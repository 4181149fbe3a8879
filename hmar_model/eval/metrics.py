"""FID, sFID, Inception Score and improved precision/recall from Inception features, as the ADM evaluator.

    mu, sigma = feature_statistics(feats)                         # (D,), (D, D) float64
    fid = frechet_distance(mu1, sigma1, mu2, sigma2)   # ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)
    isc = inception_score(logits)                                 # exp E[KL(p(y|x) ‖ p(y))], splits of 5,000
    precision, recall = precision_recall(ref_feats, sample_feats)  # k-NN manifolds, k = 3

The matrix square root is ``scipy.linalg.sqrtm`` (as the ADM evaluator and pytorch-fid); the k-NN distances run
in torch (float32, blocks of rows) on the features' device of choice.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

IS_SPLIT_SIZE = 5000     # ADM: the Inception Score is averaged over consecutive splits of 5,000 images
PR_NEIGHBOURS = 3        # ADM / Kynkäänniemi et al.: radius = distance to the 3rd nearest neighbour


def _check_features(feats: np.ndarray, name: str, min_rows: int = 2) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"{name}: features must be (N, D), got shape {feats.shape}")
    if len(feats) < min_rows:
        raise ValueError(f"{name}: {len(feats)} feature vector(s); need at least {min_rows}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return feats


def feature_statistics(feats: np.ndarray, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64."""
    feats = _check_features(feats, name).astype(np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); adds eps·I to both covariances if their
    product is singular (with a warning), as the ADM evaluator."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape} (were they computed with different feature layers?)")
    for name, array in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or inf")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected below D images; checked just below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the covariance product is singular; adding {eps} to the diagonals")
        offset = np.eye(len(mu1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the matrix square root has an imaginary part of "
                             f"{np.abs(covmean.imag).max():.3g}; the covariances are ill-conditioned "
                             "(too few images for the feature dimension?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """Mean over consecutive splits of exp(mean_x KL(p(y|x) ‖ mean_x p(y|x))), p = softmax(logits), no shuffle."""
    logits = _check_features(logits, "logits", min_rows=1).astype(np.float64)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    for begin in range(0, len(log_p), split_size):
        part = log_p[begin:begin + split_size]
        log_marginal = np.log(np.exp(part).mean(axis=0, keepdims=True))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared Euclidean distances, clamped at 0 (expanded form, as the ADM evaluator)."""
    d = a.square().sum(1, keepdim=True) - 2 * a @ b.t() + b.square().sum(1)[None]
    return d.clamp_(min=0)


def manifold_radii(feats: torch.Tensor, k: int = PR_NEIGHBOURS, block: int = 4096) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour within the set (itself excluded)."""
    if len(feats) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} images per set, got {len(feats)}")
    radii = [_squared_distances(feats[i:i + block], feats).kthvalue(k + 1, dim=1).values
             for i in range(0, len(feats), block)]
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    """Fraction of points inside at least one ball (centre, radius)."""
    inside = [(_squared_distances(points[i:i + block], centres) <= radii[None]).any(dim=1)
              for i in range(0, len(points), block)]
    return torch.cat(inside).double().mean().item()


def precision_recall(ref_feats: np.ndarray, sample_feats: np.ndarray, k: int = PR_NEIGHBOURS, device="cpu",
                     block: int = 4096) -> tuple[float, float]:
    """Improved precision (samples inside the reference manifold) and recall (references inside the sample
    manifold); a manifold is the union of balls around its points reaching their k-th nearest neighbour."""
    ref = torch.from_numpy(_check_features(ref_feats, "reference features", k + 1)).float().to(device)
    sample = torch.from_numpy(_check_features(sample_feats, "sample features", k + 1)).float().to(device)
    if ref.shape[1] != sample.shape[1]:
        raise ValueError(f"feature dimensions differ: reference {ref.shape[1]}, samples {sample.shape[1]}")
    ref_radii, sample_radii = manifold_radii(ref, k, block), manifold_radii(sample, k, block)
    return _coverage(sample, ref, ref_radii, block), _coverage(ref, sample, sample_radii, block)
