"""HMAR: Markovian next-scale prediction (block-diagonal), masked prediction, and the composite sampler model.

Three models, three official key layouts (spec §2.8–2.9):

* ``NextScalePrediction`` (NSP): VAR's keys and inputs, block-diagonal mask. Scale k only sees its own input,
  ↓p_k f̂_{<k}, so sampling needs no KV cache: step k runs the transformer on scale k's n_k tokens alone.
* ``MaskedPrediction`` (MP): the NSP network finetuned (last ``n_layers_train`` blocks, head, [MASK]) to predict
  masked tokens of a scale from the context ↓p_k f̂_{<k} plus the scale's own unmasked tokens
  ↓p_k φ_k(↑E[r_k]). ``word_embed`` has no bias; ``word_embed_bias`` is added once to the sum of the two maps.
* ``HMAR`` (composite, the official hmar-d*.pth): shared ``base_blocks`` (depth − n), then either ``ns_blocks``
  + ``ns_head*`` (next-scale pass) or ``mask_blocks`` + ``mask_head*`` (refinement pass).

Converters between the (NSP, MP) pair and the composite live in ``checkpoints``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .blocks import (AdaLNBeforeHead, BlockCall, MultiScaleAttention, ScaleEmbeddings, at_least_fp32, call_block,
                     dense_attention, head_cross_entropy, logits, run_blocks)
from .schedules import PATCH_NUMS
from .quant import autocast_disabled
from .var import VAR, TransformerConfig, build_transformer, make_blocks


class NextScalePrediction(VAR):
    """HMAR's next-scale model: VAR's layout with a block-diagonal mask (the Markov assumption)."""

    pattern = "block_diagonal"

    def inference_state(self):
        return None  # nothing carried between scales but f̂


class _SplitBiasEmbeddings(ScaleEmbeddings):
    """word_embed without bias + ``word_embed_bias`` + ``mask_embed``: HMAR's masked-prediction input."""

    def _init_split_bias(self, cfg: TransformerConfig):
        self._init_scale_embeddings(cfg.patch_nums, cfg.num_classes, cfg.width)
        self.word_embed = nn.Linear(cfg.latent_channels, cfg.width, bias=False)
        self.word_embed_bias = nn.Parameter(torch.zeros(cfg.width))
        self.mask_embed = nn.Embedding(1, cfg.width)

    def word_tokens(self, x_BlCv: torch.Tensor) -> torch.Tensor:
        """Next-scale tokens: W·x + b (the same function as VAR's biased word_embed)."""
        return self.word_embed(at_least_fp32(x_BlCv)) + self.word_embed_bias

    def mask_tokens(self, ctx_BlCv: torch.Tensor, own_BlCv: torch.Tensor, masked_Bl: torch.Tensor) -> torch.Tensor:
        """W·ctx + (masked ? [MASK] : W·own) + b, (B, l, C): the bias is added once to the sum of both maps."""
        own_BlC = self.word_embed(at_least_fp32(own_BlCv))
        own_BlC = torch.where(masked_Bl.unsqueeze(-1), self.mask_embed.weight.to(own_BlC.dtype), own_BlC)
        return self.word_embed(at_least_fp32(ctx_BlCv)) + own_BlC + self.word_embed_bias

    def _teacher_forcing(self, label_B, body_BlC, blocks, head_nm, head, backend, fused, return_hidden):
        """Prepend the class token, add lvl_pos, run ``blocks`` block-diagonally, return logits (B, L, V) or
        (x_BLC, cond_BD) with ``return_hidden``."""
        with autocast_disabled():
            cond_BD = self.conditioning(label_B, self.cfg.cond_drop_rate if self.training else 0.0)
            lvl_pos = self.lvl_pos()
            x_BLC = torch.cat((self.start_tokens(cond_BD, lvl_pos), body_BlC + lvl_pos[:, self.first_l:]), dim=1)
        x_BLC = run_blocks(blocks, x_BLC, cond_BD, MultiScaleAttention(self.patch_nums, "block_diagonal", backend),
                           fused)
        return (x_BLC, cond_BD) if return_hidden else logits(head_nm, head, x_BLC, cond_BD)

    def _mask_forward(self, label_B, x_ctx, x_own, masked, blocks, head_nm, head, backend, fused, return_hidden):
        masked = _validate_masked(masked, x_own)
        with autocast_disabled():
            body = self.mask_tokens(x_ctx, x_own, masked)
        return self._teacher_forcing(label_B, body, blocks, head_nm, head, backend, fused, return_hidden)


def _validate_masked(masked: torch.Tensor, x_own: torch.Tensor) -> torch.Tensor:
    B, L1 = x_own.shape[:2]
    if not isinstance(masked, torch.Tensor) or masked.dtype != torch.bool:
        raise TypeError(f"masked must be a bool tensor of shape ({L1},) or ({B}, {L1}), got "
                        f"{getattr(masked, 'dtype', type(masked).__name__)}")
    if masked.shape not in ((L1,), (B, L1)):
        raise ValueError(f"masked has shape {tuple(masked.shape)}; expected ({L1},) or ({B}, {L1}) "
                         "(one flag per position after the start token)")
    return masked.expand(B, L1)


class MaskedPrediction(_SplitBiasEmbeddings):
    """Masked-prediction finetune model (official MP layout: NSP keys − word_embed.bias + word_embed_bias,
    mask_embed)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self._init_split_bias(cfg)
        self.blocks = make_blocks(cfg, cfg.drop_path_rates())
        self.head_nm = AdaLNBeforeHead(cfg.width, cfg.width, cfg.norm_eps)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)

    def forward(self, label_B, x_ctx_BLCv, x_own_BLCv, masked, backend: str = "auto", *, fused: bool = False,
                return_hidden: bool = False):
        """Logits (B, L, V). x_ctx = next-scale inputs, x_own = ``quantizer.masked_inputs``; ``masked`` (L − n_0,)
        or (B, L − n_0) bool marks the positions whose own token is replaced by [MASK]. ``fused`` and
        ``return_hidden`` as in ``VAR.forward``."""
        return self._mask_forward(label_B, x_ctx_BLCv, x_own_BLCv, masked, self.blocks, self.head_nm, self.head,
                                  backend, fused, return_hidden)

    def head_cross_entropy(self, x_BLC, cond_BD, target_BL, chunk_rows: int | None = None,
                           return_hits: bool = False):
        """Per-token cross-entropy (B, L) of the head, fused (see ``VAR.head_cross_entropy``)."""
        return head_cross_entropy(self.head_nm, self.head, x_BLC, cond_BD, target_BL, chunk_rows, return_hits)

    def freeze_for_finetuning(self) -> list[str]:
        """Leave trainable only the last n_layers_train blocks, head_nm, head and mask_embed (as the official
        finetune); returns the trainable parameter names."""
        first = len(self.blocks) - self.cfg.n_layers_train
        trainable = []
        for name, p in self.named_parameters():
            keep = name.startswith(("head.", "head_nm.", "mask_embed.")) or (
                name.startswith("blocks.") and int(name.split(".")[1]) >= first)
            p.requires_grad_(keep)
            if keep:
                trainable.append(name)
        return trainable


class HMAR(_SplitBiasEmbeddings):
    """Composite inference model: base_blocks → ns_blocks → ns_head, or base_blocks → mask_blocks → mask_head."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        n = cfg.n_layers_train
        if not 0 < n <= cfg.depth:
            raise ValueError(f"n_layers_train must be in [1, depth = {cfg.depth}], got {n}")
        self.cfg = cfg
        self._init_split_bias(cfg)
        rates = cfg.drop_path_rates()
        self.base_blocks = make_blocks(cfg, rates[:cfg.depth - n])
        # Upstream gives both branches the rates of blocks 0..n−1; these are blocks depth−n..depth−1.
        self.ns_blocks = make_blocks(cfg, rates[cfg.depth - n:])
        self.mask_blocks = make_blocks(cfg, rates[cfg.depth - n:])
        self.ns_head_nm = AdaLNBeforeHead(cfg.width, cfg.width, cfg.norm_eps)
        self.ns_head = nn.Linear(cfg.width, cfg.vocab_size)
        self.mask_head_nm = AdaLNBeforeHead(cfg.width, cfg.width, cfg.norm_eps)
        self.mask_head = nn.Linear(cfg.width, cfg.vocab_size)

    @property
    def ns_path(self) -> list:
        return list(self.base_blocks) + list(self.ns_blocks)

    @property
    def mask_path(self) -> list:
        return list(self.base_blocks) + list(self.mask_blocks)

    def forward_next_scale(self, label_B, x_BLCv_wo_first_l, backend: str = "auto", *, fused: bool = False
                           ) -> torch.Tensor:
        """Teacher-forced next-scale logits (B, L, V), block-diagonal (equals the NSP model it came from)."""
        with autocast_disabled():
            body = self.word_tokens(x_BLCv_wo_first_l)
        return self._teacher_forcing(label_B, body, self.ns_path, self.ns_head_nm, self.ns_head, backend, fused,
                                     False)

    def forward_masked(self, label_B, x_ctx_BLCv, x_own_BLCv, masked, backend: str = "auto", *,
                       fused: bool = False) -> torch.Tensor:
        """Teacher-forced masked-prediction logits (B, L, V) (equals the MP model it came from)."""
        return self._mask_forward(label_B, x_ctx_BLCv, x_own_BLCv, masked, self.mask_path, self.mask_head_nm,
                                  self.mask_head, backend, fused, False)

    forward = forward_next_scale

    # ---- inference protocol used by sampling.generate (``call`` runs one block, see ``run_blocks``) ----
    def inference_state(self):
        return None

    def next_scale_logits(self, tokens_BlC, cond_BD, state=None, call: BlockCall = call_block) -> torch.Tensor:
        x_BlC = run_blocks(self.ns_path, tokens_BlC, cond_BD, dense_attention, call=call)
        return logits(self.ns_head_nm, self.ns_head, x_BlC, cond_BD)

    def mask_logits(self, tokens_BlC, cond_BD, call: BlockCall = call_block) -> torch.Tensor:
        x_BlC = run_blocks(self.mask_path, tokens_BlC, cond_BD, dense_attention, call=call)
        return logits(self.mask_head_nm, self.mask_head, x_BlC, cond_BD)


def build_hmar_nsp(depth: int, patch_nums: Sequence[int] = PATCH_NUMS[256], device=None,
                   **overrides) -> NextScalePrediction:
    """HMAR next-scale model (VAR key layout, block-diagonal), official hyper-parameters, random weights."""
    return build_transformer(NextScalePrediction, depth, patch_nums, device, **overrides)


def build_hmar_mp(depth: int, patch_nums: Sequence[int] = PATCH_NUMS[256], device=None,
                  **overrides) -> MaskedPrediction:
    """HMAR masked-prediction finetune model (n_layers_train = 8), random weights."""
    return build_transformer(MaskedPrediction, depth, patch_nums, device, **overrides)


def build_hmar(depth: int, patch_nums: Sequence[int] = PATCH_NUMS[256], device=None, **overrides) -> HMAR:
    """Composite HMAR-d{depth} (n_layers_train = 8): loads the official hmar-d16.pth … hmar-d30.pth."""
    return build_transformer(HMAR, depth, patch_nums, device, **overrides)
