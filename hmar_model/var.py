"""VAR: next-scale prediction with a block-causal transformer (scale k attends scales ≤ k), KV-cached sampling.

Sequence (B, L, C), L = Σ p_k²: position 0 holds the class token, scale k ≥ 1 holds word_embed of the
area-downsampled cumulative reconstruction of scales < k (``MultiScaleQuantizer.next_scale_inputs``), and every
position adds lvl_embed(scale) + pos_1LC. Keys follow the official state_dict (spec §2.9), e.g. for d16: 219
entries plus the dense mask buffer ``attn_bias_for_masking`` that official files carry and that we never build
(it is checked for shape and dropped on load; ``checkpoints.official_state_dict`` writes it back).

    var = build_var(16)
    logits_BLV = var(label_B, x_BLCv_wo_first_l)           # teacher forcing, block-causal attention
    images = hmar_model.sample(var, vqvae, labels, cfg=1.5, top_k=900, top_p=0.96, seed=0)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from hmar_kernels.tiles import validate_patch_nums

from .blocks import (AdaLNBeforeHead, AdaLNSelfAttn, BlockCall, KVCache, MultiScaleAttention, ScaleEmbeddings,
                     at_least_fp32, call_block, dense_attention, head_cross_entropy, init_transformer_weights_, logits,
                     official_adaln_gamma, run_blocks)
from .quant import autocast_disabled
from .schedules import PATCH_NUMS


@dataclass
class TransformerConfig:
    depth: int = 16  # transformer blocks
    patch_nums: tuple[int, ...] = field(default_factory=lambda: PATCH_NUMS[256])  # token-map sides, small → large
    width: int | None = None  # C (embedding width); official: 64·depth
    num_heads: int | None = None  # official: depth (head dim 64)
    num_classes: int = 1000  # class_emb has num_classes + 1 rows; the last one is the null class
    vocab_size: int = 4096  # V, codebook size of the VQVAE (head outputs)
    latent_channels: int = 32  # Cvae, width of the VQVAE latents fed to word_embed
    mlp_ratio: float = 4.0  # FFN hidden = round(mlp_ratio·C)
    norm_eps: float = 1e-6  # of the non-affine LayerNorms
    drop_path_rate: float | None = None  # stochastic depth at the last block; official: 0.1·depth/24
    cond_drop_rate: float = 0.1  # probability of the null class in training (for CFG)
    n_layers_train: int = 8  # HMAR: last blocks finetuned for masked prediction (mask_blocks of the composite)
    adaln_gamma: float | None = None  # init of the AdaLN gamma rows; official: by depth (official_adaln_gamma)

    def __post_init__(self):
        self.patch_nums = validate_patch_nums(self.patch_nums)
        self.width = 64 * self.depth if self.width is None else self.width
        self.num_heads = self.depth if self.num_heads is None else self.num_heads
        self.drop_path_rate = 0.1 * self.depth / 24 if self.drop_path_rate is None else self.drop_path_rate
        self.adaln_gamma = official_adaln_gamma(self.depth) if self.adaln_gamma is None else self.adaln_gamma
        if self.depth < 1 or self.width % self.num_heads:
            raise ValueError(f"need depth ≥ 1 and width divisible by num_heads, got depth {self.depth}, "
                             f"width {self.width}, num_heads {self.num_heads}")

    def drop_path_rates(self) -> list[float]:
        """Linearly increasing from 0 at block 0 to drop_path_rate at the last block."""
        return torch.linspace(0, self.drop_path_rate, self.depth, device="cpu").tolist()


def make_blocks(cfg: TransformerConfig, rates: Sequence[float]) -> nn.ModuleList:
    return nn.ModuleList(AdaLNSelfAttn(cfg.width, cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, r)
                         for r in rates)


class VAR(ScaleEmbeddings):
    pattern = "block_causal"  # training mask; inference reproduces it with a KV cache

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self._init_scale_embeddings(cfg.patch_nums, cfg.num_classes, cfg.width)
        self.word_embed = nn.Linear(cfg.latent_channels, cfg.width)
        self.blocks = make_blocks(cfg, cfg.drop_path_rates())
        self.head_nm = AdaLNBeforeHead(cfg.width, cfg.width, cfg.norm_eps)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)

    def word_tokens(self, x_BlCv: torch.Tensor) -> torch.Tensor:
        """Latent tokens (B, l, Cvae) → (B, l, C), without position/level embeddings."""
        return self.word_embed(at_least_fp32(x_BlCv))

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor, backend: str = "auto", *,
                fused: bool = False, return_hidden: bool = False):
        """Teacher forcing: logits (B, L, V) fp32 for every position. Label dropout and drop path in train().

        ``fused``: the fused q/k normalisation kernels (the fast training step). ``return_hidden``: return
        (x_BLC, cond_BD), the last block's output and the conditioning, instead of logits, for
        ``head_cross_entropy`` (the fused head + loss)."""
        with autocast_disabled():  # the embedding stage stays fp32, as upstream VAR
            cond_BD = self.conditioning(label_B, self.cfg.cond_drop_rate if self.training else 0.0)
            lvl_pos = self.lvl_pos()
            x_BLC = torch.cat((self.start_tokens(cond_BD, lvl_pos),
                               self.word_tokens(x_BLCv_wo_first_l) + lvl_pos[:, self.first_l:]), dim=1)
        x_BLC = run_blocks(self.blocks, x_BLC, cond_BD, MultiScaleAttention(self.patch_nums, self.pattern, backend),
                           fused)
        return (x_BLC, cond_BD) if return_hidden else logits(self.head_nm, self.head, x_BLC, cond_BD)

    def head_cross_entropy(self, x_BLC, cond_BD, target_BL, chunk_rows: int | None = None,
                           return_hits: bool = False):
        """Per-token cross-entropy (B, L) of the head on ``forward(..., return_hidden=True)``'s output, fused
        (``blocks.head_cross_entropy``): equals cross_entropy(forward(...), target, reduction="none"); with
        ``return_hits`` also the (B, L) bool argmax hits, ``(ce_BL, hit_BL)``."""
        return head_cross_entropy(self.head_nm, self.head, x_BLC, cond_BD, target_BL, chunk_rows, return_hits)

    # ---- inference protocol used by sampling.generate ----
    def inference_state(self):
        """A fresh KV cache (VAR) or None (Markovian models: each step sees its own scale only)."""
        return KVCache(len(self.blocks), self.lvl_1L.shape[1])

    def next_scale_logits(self, tokens_BlC: torch.Tensor, cond_BD: torch.Tensor, state,
                          call: BlockCall = call_block) -> torch.Tensor:
        """Logits (B, l, V) of this step's scale; ``call`` runs one block (see ``run_blocks``)."""
        attend = dense_attention if state is None else [state.layer(i) for i in range(len(self.blocks))]
        x_BlC = run_blocks(self.blocks, tokens_BlC, cond_BD, attend, call=call)
        return logits(self.head_nm, self.head, x_BlC, cond_BD)


def build_transformer(cls, depth: int, patch_nums: Sequence[int] = PATCH_NUMS[256], device=None, init: bool = True,
                      **overrides):
    """``cls(TransformerConfig(depth, patch_nums, **overrides))`` with the official init, on ``device``.

    On the meta device nothing is allocated (key and shape checks of the full-size models).
    """
    cfg = TransformerConfig(depth=depth, patch_nums=tuple(patch_nums), **overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = cls(cfg)
        if init and torch.device(device or "cpu").type != "meta":
            init_transformer_weights_(model, cfg.width, cfg.depth, cfg.adaln_gamma)
    return model


def build_var(depth: int, patch_nums: Sequence[int] = PATCH_NUMS[256], device=None, **overrides) -> VAR:
    """VAR-d{depth} with the official hyper-parameters (C = 64·depth, heads = depth), random weights.

    The official files var_d16.pth … var_d30.pth load with ``load_checkpoint(model, path)``.
    """
    return build_transformer(VAR, depth, patch_nums, device, **overrides)
