"""The models a run trains, built from its config: the VQVAE (frozen, only its quantiser is used per step), the
transformer of the stage, and the masked stage's starting weights.

    vqvae = build_vae(cfg, device)                  # checkpoint, or seeded random weights ("random", "tiny")
    model = build_model(cfg, device)                # NextScalePrediction / VAR, or MaskedPrediction
    init_masked_from(model, cfg.init)               # NSP → MP weights (fresh [MASK]); MP or composite: as is
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..checkpoints import detect_format, hmar_to_nsp_mp, load_checkpoint, load_model, read_state_dict
from ..hmar import MaskedPrediction, NextScalePrediction
from ..tiny import TINY_VQVAE
from ..var import VAR, build_transformer
from ..vqvae import build_vqvae
from .config import ConfigError


def build_vae(spec: str, seed: int, patch_nums, device) -> nn.Module:
    """A frozen VQVAE: "tiny" / "random" (seeded weights, tiny or official shape) or a checkpoint path."""
    if spec in ("tiny", "random"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vqvae = build_vqvae(patch_nums, **(TINY_VQVAE if spec == "tiny" else {}))
    else:
        if not os.path.isfile(spec):
            raise ConfigError(f"vae checkpoint not found: {spec!r} (give a local file, or vae=random / vae=tiny)")
        vqvae = load_model(spec, kind="vqvae", patch_nums=patch_nums)
    if vqvae.cfg.vocab_size > 65536:
        raise ConfigError(f"the VQVAE has {vqvae.cfg.vocab_size} codes; token shards store uint16 (≤ 65536)")
    return vqvae.to(device).eval().requires_grad_(False)


def model_class(cfg):
    if cfg.stage == "masked":
        return MaskedPrediction
    return VAR if cfg.model.kind == "var" else NextScalePrediction


def build_model(cfg, device) -> nn.Module:
    """The stage's transformer, official init (seeded by the caller), in train mode."""
    m = cfg.model
    overrides = {k: m[k] for k in ("width", "num_heads", "drop_path_rate", "adaln_gamma") if m[k] is not None}
    model = build_transformer(model_class(cfg), m.depth, tuple(cfg.patch_nums), device=device,
                              num_classes=m.num_classes, vocab_size=m.vocab_size, latent_channels=m.latent_channels,
                              cond_drop_rate=m.cond_drop_rate, n_layers_train=m.n_layers_train, **overrides)
    return model.train()


def check_vae_matches(model: nn.Module, vqvae: nn.Module):
    if vqvae.cfg.vocab_size != model.cfg.vocab_size or vqvae.cfg.z_channels != model.cfg.latent_channels:
        raise ConfigError(f"the VQVAE has {vqvae.cfg.vocab_size} codes of width {vqvae.cfg.z_channels} but the "
                          f"model expects model.vocab_size={model.cfg.vocab_size}, "
                          f"model.latent_channels={model.cfg.latent_channels}")


def init_state_dict(source: str) -> dict:
    """The weights a masked stage starts from: a next-scale run folder (its export), or a file."""
    if os.path.isdir(source):
        path = os.path.join(source, "export", "model.pth")
        if not os.path.isfile(path):
            raise ConfigError(f"init={source!r} is a folder without export/model.pth (is the run finished?)")
        source = path
    if not os.path.isfile(source):
        raise ConfigError(f"init checkpoint not found: {source!r}")
    return read_state_dict(source)


def nsp_state_dict(source: str) -> dict:
    """The next-scale weights inside ``init`` (an NSP file, or the next-scale half of a composite HMAR file)."""
    sd = init_state_dict(source)
    fmt = detect_format(sd)
    if fmt == "hmar":
        return hmar_to_nsp_mp(sd)[0]
    if fmt in ("hmar_nsp", "var_or_nsp"):
        return sd
    raise ConfigError(f"init={source!r} is a {fmt!r} checkpoint; the masked stage starts from an HMAR next-scale "
                      "model (run folder, NSP .pth) or an official composite hmar-d*.pth")


def init_masked_from(model: MaskedPrediction, source: str) -> str:
    """Load ``source`` into the MP model; returns what was loaded. NSP weights: word_embed.bias becomes
    word_embed_bias and [MASK] keeps its fresh init (as upstream); MP or composite files load their MP half."""
    sd = init_state_dict(source)
    fmt = detect_format(sd)
    if fmt == "hmar":
        load_checkpoint(model, hmar_to_nsp_mp(sd)[1])
        return "the masked-prediction half of a composite HMAR checkpoint"
    if fmt == "hmar_mp":
        load_checkpoint(model, sd)
        return "a masked-prediction checkpoint"
    if fmt not in ("hmar_nsp", "var_or_nsp"):
        raise ConfigError(f"init={source!r} is a {fmt!r} checkpoint; expected an HMAR next-scale or masked model")
    mp = dict(sd)
    mp["word_embed_bias"] = mp.pop("word_embed.bias")
    mp["mask_embed.weight"] = model.mask_embed.weight.detach().clone()
    load_checkpoint(model, mp)
    return "a next-scale checkpoint (fresh [MASK] embedding)"
