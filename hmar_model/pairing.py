"""Whether a VQVAE and a transformer work together, checked before any work (from configs: no model needed).

The transformer predicts indices into the VQVAE's codebook (its vocabulary V) and embeds the VQVAE's latents
(Cvae channels): both must agree, or sampling fails late with a shape error (Cvae) or, worse, silently decodes
indices of another codebook (V).
"""
from __future__ import annotations


def fit_problem(transformer_cfg, vqvae_cfg) -> str | None:
    """None when the two fit, else what differs. Configs: TransformerConfig, VQVAEConfig."""
    problems = []
    if transformer_cfg.vocab_size != vqvae_cfg.vocab_size:
        problems.append(f"the transformer predicts {transformer_cfg.vocab_size} codes but the VQVAE's codebook has "
                        f"{vqvae_cfg.vocab_size}")
    if transformer_cfg.latent_channels != vqvae_cfg.z_channels:
        problems.append(f"the transformer embeds {transformer_cfg.latent_channels}-channel latents but the VQVAE's "
                        f"are {vqvae_cfg.z_channels}-channel")
    return "; ".join(problems) or None


def check_fit(transformer_cfg, vqvae_cfg, transformer_name: str = "the transformer",
              vqvae_name: str = "the VQVAE") -> None:
    """ValueError naming both models when they do not fit."""
    problem = fit_problem(transformer_cfg, vqvae_cfg)
    if problem:
        raise ValueError(f"{vqvae_name} does not fit {transformer_name}: {problem}; use the VQVAE the transformer "
                         "was trained with (official models: 'vqvae', vae_ch160v4096z32.pth)")
