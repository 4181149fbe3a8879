"""Tiny configurations of the same architectures, for tests, smoke runs and examples on a CPU.

Same code paths as the official models, with small widths: VQVAE 16 px images (4×4 latent, schedule
(1, 2, 3, 4)), transformers of depth 3 and width 32. ``demo_models`` puts them on the official 256 px schedule
(64 px images) with random weights: the whole sampling pipeline in about a second, no download.
"""
from __future__ import annotations

import torch

from .hmar import build_hmar, build_hmar_mp, build_hmar_nsp
from .schedules import PATCH_NUMS
from .var import build_var
from .vqvae import build_vqvae

TINY_PATCH_NUMS = (1, 2, 3, 4)
TINY_VQVAE = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1)
TINY_TRANSFORMER = dict(width=32, num_heads=2, num_classes=10, vocab_size=64, latent_channels=8, n_layers_train=2)
TINY_DEPTH = 3


def tiny_vqvae(patch_nums=TINY_PATCH_NUMS, device=None):
    return build_vqvae(patch_nums, device=device, **TINY_VQVAE)


def tiny_transformer(kind: str, patch_nums=TINY_PATCH_NUMS, device=None, depth: int = TINY_DEPTH, **overrides):
    """kind: 'var', 'hmar_nsp', 'hmar_mp' or 'hmar' (composite)."""
    builders = {"var": build_var, "hmar_nsp": build_hmar_nsp, "hmar_mp": build_hmar_mp, "hmar": build_hmar}
    return builders[kind](depth, patch_nums, device=device, **{**TINY_TRANSFORMER, **overrides})


def demo_models(kind: str = "hmar", seed: int = 0, device=None):
    """(transformer, vqvae), random weights, eval mode: ``kind`` ('hmar', 'var' or 'hmar_nsp') on the official
    256 px schedule (so HMAR's default refinement runs) with the tiny VQVAE (4× downsampling: 64 px images).
    The images are structured noise: this shows the pipeline working, not a trained model."""
    if kind not in ("hmar", "var", "hmar_nsp"):
        raise ValueError(f"demo models are 'hmar', 'var' or 'hmar_nsp', got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vqvae = tiny_vqvae(PATCH_NUMS[256]).eval()
    transformer = randomize_(tiny_transformer(kind, PATCH_NUMS[256]), seed).eval()
    return transformer.to(device), vqvae.to(device)


def randomize_(model, seed: int, std: float = 0.3):
    """Overwrite every parameter with N(0, std²) (log temperatures near ln 4), so that every block, gamma and
    bias really shapes the output: the official init (tiny AdaLN gammas) would let numerical tests pass with a
    broken block. Returns the model."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.copy_(math.log(4.0) + 0.5 * noise if name.endswith("scale_mul_1H11") else std * noise)
    return model
