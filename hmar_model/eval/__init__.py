"""Evaluation: the FID sample set (generate), Inception features and FID / sFID / IS / precision / recall.

    from hmar_model.eval import evaluate, generate_samples
    generate_samples(model, vqvae, "samples.npz", per_class=50, cfg=1.7, top_k=1000, top_p=0.99)
    print(evaluate("samples.npz", "VIRTUAL_imagenet256_labeled.npz", device="cuda")["fid"])
"""
from .evaluate import evaluate
from .generate import generate_samples
from .images import ImageSetError, open_source
from .inception import InceptionWeightsError, load_inception, random_inception
from .metrics import feature_statistics, frechet_distance, inception_score, precision_recall

__all__ = ["evaluate", "generate_samples", "open_source", "ImageSetError", "load_inception", "random_inception",
           "InceptionWeightsError", "feature_statistics", "frechet_distance", "inception_score", "precision_recall"]
