"""Pieces shared by VAR and HMAR: AdaLN self-attention block, attention, FFN, head norm, embeddings, KV cache.

How a block attends is passed in, never switched on inside a module:

* ``MultiScaleAttention(patch_nums, pattern)``: training / teacher forcing over the whole sequence through
  ``hmar_kernels.attention`` ("block_causal" for VAR, "block_diagonal" for HMAR);
* ``dense_attention``: one scale's tokens attending each other (HMAR inference, the Markov step);
* ``KVCache``: VAR inference, this step's queries against the keys of every scale so far.

Attention logits: q and k are L2-normalised, q is multiplied by a per-head temperature exp(min(θ_h, ln 100)),
and the softmax scale is 1.

``fused=True`` (the fast training step) computes that normalisation with one Triton kernel per pass
(``hmar_kernels.fused.qk_norm``) instead of the plain formulation, which stays the reference; ``head_cross_entropy``
replaces ``logits`` + cross-entropy without materialising the (B, L, V) logits.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import hmar_kernels
from hmar_kernels.fused import linear_cross_entropy, qk_norm

from .schedules import scale_slices, seq_len

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (q, k, v) (B, H, l, D) → (B, H, l, D)
MAX_LOG_TEMPERATURE = math.log(100.0)


class MultiScaleAttention:
    """Training-time attention over the full multi-scale sequence through our block-sparse op."""

    def __init__(self, patch_nums: Sequence[int], pattern: str, backend: str = "auto"):
        self.patch_nums, self.pattern, self.backend = tuple(patch_nums), pattern, backend

    def __call__(self, q, k, v):
        return hmar_kernels.attention(q, k, v, self.patch_nums, self.pattern, softmax_scale=1.0,
                                      backend=self.backend)


def dense_attention(q, k, v):
    """All tokens of the step attend each other (HMAR: the current scale only)."""
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)


class KVCache:
    """Per-layer key/value buffers preallocated for the whole sequence (no concatenation copies).

    ``layer(i)`` is the attend function of block i: it appends this step's k, v and attends the step's queries
    to every cached key (exactly the block-causal rows of the step's scale).
    """

    def __init__(self, num_layers: int, max_len: int):
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers

    def layer(self, i: int) -> Attend:
        def attend(q, k, v):
            if self.k[i] is None:
                B, H, _, D = k.shape
                self.k[i] = k.new_empty(B, H, self.max_len, D)
                self.v[i] = v.new_empty(B, H, self.max_len, D)
            start, end = self.lengths[i], self.lengths[i] + k.shape[2]
            if end > self.max_len:
                raise ValueError(f"KV cache holds {self.max_len} tokens; this step would fill it to {end}")
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v
            self.lengths[i] = end
            return F.scaled_dot_product_attention(q, self.k[i][:, :, :end], self.v[i][:, :, :end], scale=1.0)
        return attend


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample with probability p, rescale the rest."""
    if not training or p == 0.0:  # training first: inference never reads p (compiled blocks share one graph)
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep.div_(1 - p)


class SelfAttention(nn.Module):
    """Keys: ``mat_qkv`` (3C × C, no bias), ``q_bias``, ``v_bias``, buffer ``zero_k_bias`` (keys get no bias),
    ``scale_mul_1H11`` (log temperature per head, init ln 4), ``proj`` (C × C + bias)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(width, width)

    def forward(self, x_BLC: torch.Tensor, attend: Attend, fused: bool = False) -> torch.Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))  # [q_bias | 0 | v_bias]
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D)
        if fused:
            q, k = qk_norm(q, k, self.scale_mul_1H11.view(self.num_heads))  # same math, one kernel per pass
        else:
            temperature = self.scale_mul_1H11.clamp(max=MAX_LOG_TEMPERATURE).exp()
            # Under autocast normalize() returns fp32; the attention kernels want one dtype, v's.
            q = F.normalize(q, dim=-1).mul(temperature).to(v.dtype)
            k = F.normalize(k, dim=-1).to(v.dtype)
        out = attend(q, k, v)  # (B, H, L, D)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNSelfAttn(nn.Module):
    """x += γ1·Attn(LN(x)(1 + s1) + b1);  x += γ2·FFN(LN(x)(1 + s2) + b2).

    ``ada_lin`` = (SiLU, Linear(D, 6C)); its output viewed (B, 1, 6, C) is, in this order,
    γ1, γ2, s1, s2, b1, b2 (gammas first: a different order silently breaks checkpoints).
    """

    def __init__(self, width: int, cond_dim: int, num_heads: int, mlp_ratio: float, norm_eps: float,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.width, self.drop_path_rate = width, drop_path_rate
        self.ln_wo_grad = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(width, num_heads)
        self.ffn = FFN(width, round(width * mlp_ratio))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * width))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor, attend: Attend, fused: bool = False
                ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.width).unbind(2)
        h = self.attn(self.ln_wo_grad(x_BLC).mul(scale1.add(1)).add_(shift1), attend, fused)
        x_BLC = x_BLC + drop_path(h * gamma1, self.drop_path_rate, self.training)
        h = self.ffn(self.ln_wo_grad(x_BLC).mul(scale2.add(1)).add_(shift2))
        return x_BLC + drop_path(h * gamma2, self.drop_path_rate, self.training)


class AdaLNBeforeHead(nn.Module):
    """LN(x)(1 + s) + b with (s, b) = split(Linear(SiLU(cond)), 2) in that order."""

    def __init__(self, width: int, cond_dim: int, norm_eps: float):
        super().__init__()
        self.width = width
        self.ln_wo_grad = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * width))

    def forward(self, x_BLC, cond_BD):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.width).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


def call_block(block: AdaLNSelfAttn, x_BLC, cond_BD, attend: Attend, fused: bool = False) -> torch.Tensor:
    """``block(x, cond, attend, fused)``: the unit that ``sampling.CompiledInference`` compiles once for every
    block (the parameters are graph inputs, so blocks of one width share the compiled code)."""
    return block(x_BLC, cond_BD, attend, fused)


BlockCall = Callable[..., torch.Tensor]  # call_block's signature


def run_blocks(blocks: Sequence[AdaLNSelfAttn], x_BLC, cond_BD, attend: Attend | Sequence[Attend],
               fused: bool = False, call: BlockCall = call_block):
    """Run ``blocks`` in order; ``attend`` is one function for all or one per block (a KV cache's layers);
    ``call`` runs one block (``call_block``, or a compiled copy of it)."""
    for i, block in enumerate(blocks):
        x_BLC = call(block, x_BLC, cond_BD, attend if callable(attend) else attend[i], fused)
    return x_BLC


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half types to fp32 (upstream's ``.float()``) but leave float64 alone (float64 tests)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def logits(head_nm: AdaLNBeforeHead, head: nn.Linear, x_BLC, cond_BD) -> torch.Tensor:
    """head(head_nm(x, cond)) as fp32 (B, L, V); under autocast the head itself runs in low precision."""
    return at_least_fp32(head(at_least_fp32(head_nm(at_least_fp32(x_BLC), cond_BD))))


def head_cross_entropy(head_nm: AdaLNBeforeHead, head: nn.Linear, x_BLC, cond_BD, target_BL: torch.Tensor,
                       chunk_rows: int | None = None, return_hits: bool = False):
    """Per-token cross-entropy (B, L) fp32 of ``logits(head_nm, head, x, cond)`` against ``target_BL``, with the
    head fused into the loss over row chunks: the (B, L, V) fp32 logits never exist (same rounding under
    autocast; weight the result per token, e.g. ``(ce_BL * w_L).sum(1).mean()``). ``return_hits``:
    ``(ce_BL, hit_BL)`` with hit_BL (B, L) bool = ``logits.argmax(-1) == target_BL`` (first index wins a tie)."""
    B, L, _ = x_BLC.shape
    if target_BL.shape != (B, L):
        raise ValueError(f"target_BL must be ({B}, {L}) (one token per position of x_BLC), got "
                         f"{tuple(target_BL.shape)}")
    h_BLC = at_least_fp32(head_nm(at_least_fp32(x_BLC), cond_BD))
    chunks = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    out = linear_cross_entropy(h_BLC.flatten(0, 1), head.weight, head.bias, target_BL.flatten(), **chunks,
                               return_hits=return_hits)
    return tuple(t.view(B, L) for t in out) if return_hits else out.view(B, L)


class ScaleEmbeddings(nn.Module):
    """Class table, start position, absolute positions and scale ("level") embeddings of a multi-scale sequence.

    Keys: ``class_emb`` (num_classes + 1, C; the last row is the null class), ``pos_start`` (1, n_0, C),
    ``pos_1LC`` (1, L, C), ``lvl_embed`` (K, C) and buffer ``lvl_1L`` (1, L) with the scale of every position.
    Mixed into a model (VAR, HMAR) rather than held as a submodule, so the keys have no prefix.
    """

    def _init_scale_embeddings(self, patch_nums: Sequence[int], num_classes: int, width: int):
        self.patch_nums = tuple(patch_nums)
        self.num_classes, self.first_l, L = num_classes, self.patch_nums[0] ** 2, seq_len(patch_nums)
        self.scale_ranges = scale_slices(self.patch_nums)
        init_std = math.sqrt(1 / width / 3)
        self.class_emb = nn.Embedding(num_classes + 1, width)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, width))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, width))
        nn.init.trunc_normal_(self.pos_start, mean=0, std=init_std)
        nn.init.trunc_normal_(self.pos_1LC, mean=0, std=init_std)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), width)
        levels = torch.cat([torch.full((p * p,), k, dtype=torch.long) for k, p in enumerate(self.patch_nums)])
        self.register_buffer("lvl_1L", levels.view(1, L))
        self.register_load_state_dict_pre_hook(_drop_dense_mask_buffer)

    def lvl_pos(self) -> torch.Tensor:
        """lvl_embed(lvl_1L) + pos_1LC, (1, L, C)."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def start_tokens(self, cond_BD: torch.Tensor, lvl_pos: torch.Tensor) -> torch.Tensor:
        """Scale 0's tokens: class embedding + pos_start (+ lvl_pos of scale 0), (B, n_0, C)."""
        B = cond_BD.shape[0]
        return (cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
                + lvl_pos[:, :self.first_l])

    def conditioning(self, label_B: torch.Tensor, cond_drop_rate: float = 0.0) -> torch.Tensor:
        """class_emb(label) with labels replaced by the null class with probability cond_drop_rate."""
        if cond_drop_rate > 0:
            drop = torch.rand(label_B.shape[0], device=label_B.device) < cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        return self.class_emb(label_B)


def _drop_dense_mask_buffer(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                            error_msgs):
    """Official files carry ``attn_bias_for_masking``, a dense (1, 1, L, L) 0/−inf mask (357 MB at 1024 px) that
    our attention never reads (the pattern is data passed to the kernel): check its shape, then drop it."""
    key = prefix + "attn_bias_for_masking"
    if key in state_dict:
        mask = state_dict.pop(key)
        L = module.lvl_1L.shape[1]
        if tuple(mask.shape) != (1, 1, L, L):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(mask.shape)} from "
                              f"checkpoint, the shape in current model is {(1, 1, L, L)} (sequence length L = {L})")


def init_transformer_weights_(model: nn.Module, width: int, depth: int, adaln_gamma: float, init_adaln: float = 0.5,
                              init_head: float = 0.02):
    """The official initialisation (spec §2.6) for training from scratch or random-weight benchmarks."""
    init_std = math.sqrt(1 / width / 3)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, AdaLNBeforeHead):
                m.ada_lin[-1].weight.mul_(init_adaln)
            elif isinstance(m, AdaLNSelfAttn):
                m.attn.proj.weight.div_(math.sqrt(2 * depth))
                m.ffn.fc2.weight.div_(math.sqrt(2 * depth))
                m.ada_lin[-1].weight[2 * width:].mul_(init_adaln)  # scale and shift rows
                m.ada_lin[-1].weight[:2 * width].mul_(adaln_gamma)  # gamma rows
            elif isinstance(m, nn.Linear) and name.endswith("head"):  # head, ns_head, mask_head
                m.weight.mul_(init_head)


def official_adaln_gamma(depth: int) -> float:
    """Gamma-row init of the official runs: d16/d20 1e-3, d24 1e-4, d30 1e-5."""
    return {24: 1e-4, 30: 1e-5}.get(depth, 1e-3)
