"""Multi-scale residual vector quantiser (the "VQ" of vae_ch160v4096z32) and the maps the transformers read.

Shapes: f, f̂ are (B, Cvae, P, P) with P = patch_nums[-1] (the latent grid); the token map of scale k is
(B, p_k·p_k) int64, row-major. Two resizes are used and must not be swapped (checkpoint parity):

* ``area`` (= adaptive average pooling) takes the residual / f̂ *down* to p_k×p_k;
* ``bicubic`` (A = −0.75, align_corners=False, no antialias) takes a code map *up* to P×P.

After the resize every scale goes through a residual conv φ(h) = 0.5·h + 0.5·conv3×3(h). Four convs are shared
over the scales; which one a scale uses is a table decided by float64 rounding (see ``phi_indices``).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Phi index per scale for the official 4-conv sharing. The rule (nearest "tick" to si/(K−1)) has exact ties at
# si = 2 and 7 for K = 10 that float64 rounding breaks as 1 and 3; exact arithmetic would pick 0 and 2 and
# silently use the wrong convs. Hard-coded for the official schedules, the numpy rule for the rest.
PHI_INDEX = {
    10: (0, 0, 1, 1, 1, 2, 2, 3, 3, 3),  # 256 and 512 px
    14: (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3),  # 1024 px
}


def phi_indices_float64(num_scales: int, num_phis: int) -> tuple[int, ...]:
    """The official selection rule, evaluated in float64 numpy: nearest tick, first index on ties."""
    m = num_phis
    edge = 1 / (3 * m) if m == 4 else 1 / (2 * m)
    ticks = np.linspace(edge, 1 - edge, m)
    ratios = [si / (num_scales - 1) if num_scales > 1 else 0.0 for si in range(num_scales)]
    return tuple(int(np.argmin(np.abs(ticks - r))) for r in ratios)


def phi_indices(num_scales: int, num_phis: int = 4) -> tuple[int, ...]:
    if num_phis == 4 and num_scales in PHI_INDEX:
        return PHI_INDEX[num_scales]
    return phi_indices_float64(num_scales, num_phis)


@contextlib.contextmanager
def autocast_disabled():
    """fp32 region inside an ambient autocast (tokenisation, teacher-forcing inputs, embedding stages)."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def fp32(fn):
    """Run ``fn`` with autocast disabled (upstream computes tokens and training inputs outside autocast)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with autocast_disabled():
            return fn(*args, **kwargs)
    return wrapper


def area(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, h, w) → (B, C, side, side) by area averaging (identity when already that size)."""
    return x if x.shape[-1] == side and x.shape[-2] == side else F.interpolate(x, size=(side, side), mode="area")


def bicubic(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, p, p) → (B, C, side, side), PyTorch bicubic with align_corners=False (same size: exact identity)."""
    return F.interpolate(x, size=(side, side), mode="bicubic")


class Phi(nn.Conv2d):
    """φ(h) = (1 − r)·h + r·conv3×3(h), r = 0.5 in the official models."""

    def __init__(self, channels: int, resi_ratio: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


class PhiPartiallyShared(nn.Module):
    """``num_phis`` residual convs (key ``qresi_ls.{j}``) shared over the scales by ``phi_indices``."""

    def __init__(self, channels: int, resi_ratio: float, num_phis: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, resi_ratio) for _ in range(num_phis))

    def for_scales(self, num_scales: int) -> list[Phi]:
        return [self.qresi_ls[j] for j in phi_indices(num_scales, len(self.qresi_ls))]


class MultiScaleQuantizer(nn.Module):
    """Codebook (``embedding``, V × Cvae), the shared Phi convs (``quant_resi``) and a usage buffer.

    Keys: ``embedding.weight`` (V, Cvae), ``quant_resi.qresi_ls.{j}.weight/bias``, ``ema_vocab_hit_SV`` (K, V)
    (only written by VAE training; a checkpoint's buffer of another K is replaced by ours on load, as upstream).
    """

    def __init__(self, vocab_size: int, channels: int, patch_nums: Sequence[int], num_phis: int = 4,
                 resi_ratio: float = 0.5):
        super().__init__()
        self.vocab_size, self.channels = vocab_size, channels
        self.patch_nums = tuple(patch_nums)
        self.embedding = nn.Embedding(vocab_size, channels)
        self.quant_resi = PhiPartiallyShared(channels, resi_ratio, num_phis)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.register_load_state_dict_pre_hook(_keep_own_usage_buffer)

    def phis(self, patch_nums: Sequence[int]) -> list[Phi]:
        return self.quant_resi.for_scales(len(patch_nums))

    def lookup(self, idx_Bl: torch.Tensor, side: int) -> torch.Tensor:
        """Token map (B, side²) → code map h (B, Cvae, side, side)."""
        return self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.channels, side, side)

    def nearest_code(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """Squared-L2 nearest codebook entry of every position, (B, h·w) row-major."""
        B, C, h, w = z_BChw.shape
        z_NC = z_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        codes = self.embedding.weight.detach()
        dist = z_NC.square().sum(dim=1, keepdim=True) + codes.square().sum(dim=1)  # ||z||² + ||e||²  (N, V)
        dist.addmm_(z_NC, codes.T, alpha=-2, beta=1)  # − 2 z·eᵀ
        return dist.argmin(dim=1).view(B, h * w)

    @torch.no_grad()
    @fp32
    def quantize(self, f_BCPP: torch.Tensor, patch_nums: Sequence[int] | None = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Residual quantisation of f → (token maps [(B, n_k)], cumulative f̂ after each scale [(B, Cvae, P, P)]).

        The last scale is never resized (it must equal the latent grid).
        """
        patch_nums = tuple(patch_nums or self.patch_nums)
        P = f_BCPP.shape[-1]
        if f_BCPP.shape[-2] != P or patch_nums[-1] != P:
            raise ValueError(f"latent grid is {tuple(f_BCPP.shape[-2:])} but patch_nums ends with {patch_nums[-1]}; "
                             "the last scale must equal the (square) latent grid")
        last = len(patch_nums) - 1
        f_rest, f_hat = f_BCPP.detach().clone(), torch.zeros_like(f_BCPP)
        indices, fhats = [], []
        for si, (p, phi) in enumerate(zip(patch_nums, self.phis(patch_nums))):
            z = area(f_rest, p) if si < last else f_rest
            idx = self.nearest_code(z)
            h = self.lookup(idx, p)
            h = phi(bicubic(h, P) if si < last else h)
            f_hat.add_(h)
            f_rest.sub_(h)
            indices.append(idx)
            fhats.append(f_hat.clone())
        return indices, fhats

    @fp32
    def indices_to_fhats(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int] | None = None
                         ) -> list[torch.Tensor]:
        """Token maps → cumulative f̂ after each scale, f̂_k = Σ_{j≤k} φ_j(↑P E[r_j]) (last scale not resized)."""
        patch_nums = tuple(patch_nums or self.patch_nums)
        P, last = patch_nums[-1], len(patch_nums) - 1
        f_hat, out = None, []
        for si, (idx, p, phi) in enumerate(zip(indices, patch_nums, self.phis(patch_nums))):
            h = self.lookup(idx, p)
            h = phi(bicubic(h, P) if si < last else h)
            f_hat = h if f_hat is None else f_hat + h
            out.append(f_hat)
        return out

    @fp32
    def next_scale_inputs(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int] | None = None
                          ) -> torch.Tensor:
        """Teacher-forcing input x_BLCv_wo_first_l (B, L − n_0, Cvae): scale k ≥ 1 sees ↓p_k f̂_{k−1}."""
        patch_nums = tuple(patch_nums or self.patch_nums)
        B, P = indices[0].shape[0], patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(B, self.channels, P, P)
        out = []
        for si in range(len(patch_nums) - 1):
            f_hat, nxt = self.next_autoregressive_input(si, patch_nums, f_hat, self.lookup(indices[si], patch_nums[si]))
            out.append(nxt.flatten(2).transpose(1, 2))  # (B, n_{si+1}, Cvae)
        return torch.cat(out, dim=1)

    @fp32
    def masked_inputs(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int] | None = None) -> torch.Tensor:
        """Masked-prediction "own" input (B, L − n_0, Cvae): scale k ≥ 1 sees ↓p_k φ_k(↑P E[r_k]) (not cumulative).

        Which of these rows are replaced by [MASK] is the caller's choice (a boolean mask, see MaskedPrediction).
        """
        patch_nums = tuple(patch_nums or self.patch_nums)
        P, phis = patch_nums[-1], self.phis(patch_nums)
        out = [area(phis[si](bicubic(self.lookup(indices[si], p), P)), p).flatten(2).transpose(1, 2)
               for si, p in enumerate(patch_nums) if si > 0]
        return torch.cat(out, dim=1)

    def next_autoregressive_input(self, si: int, patch_nums: Sequence[int], f_hat: torch.Tensor,
                                  h_BCpp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Commit scale si's code map: f̂ += φ_si(↑h) **in place**; return (f̂, ↓p_{si+1} f̂) (last: (f̂, f̂))."""
        P, last = patch_nums[-1], len(patch_nums) - 1
        phi = self.phis(patch_nums)[si]
        if si < last:
            f_hat.add_(phi(bicubic(h_BCpp, P)))
            return f_hat, area(f_hat, patch_nums[si + 1])
        f_hat.add_(phi(h_BCpp))
        return f_hat, f_hat

    def next_mask_input(self, si: int, patch_nums: Sequence[int], f_hat: torch.Tensor, h_BCpp: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(context ↓p_si f̂_{<si}, own ↓p_si φ_si(↑h)) at scale si's resolution; f̂ is not modified."""
        P, p = patch_nums[-1], patch_nums[si]
        own = self.phis(patch_nums)[si](bicubic(h_BCpp, P))  # bicubic also at the last scale (an identity)
        return area(f_hat, p), area(own, p)


def _keep_own_usage_buffer(module, state_dict, prefix, *args):
    """Upstream keeps the module's own ema_vocab_hit_SV when the checkpoint's has another scale count
    (the 10-scale VAE checkpoint loaded for the 14-scale 1024 px schedule)."""
    key = prefix + "ema_vocab_hit_SV"
    own = module.ema_vocab_hit_SV
    if key in state_dict and state_dict[key].dim() == 2 and state_dict[key].shape[1] == own.shape[1] \
            and state_dict[key].shape[0] != own.shape[0]:
        state_dict[key] = own.detach().clone()
