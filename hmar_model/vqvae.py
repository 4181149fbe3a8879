"""Multi-scale VQVAE (vae_ch160v4096z32): conv encoder, multi-scale residual quantiser, conv decoder.

Images are (B, 3, R, R) in [−1, 1]; the latent grid is R/16 (256 px → 16×16). Module names follow the official
state_dict (Appendix A of the spec: 324 entries), so ``load_state_dict(strict=True)`` takes the official file.

    vqvae = build_vqvae()                      # official hyper-parameters, random weights
    load_checkpoint(vqvae, "vae_ch160v4096z32.pth")
    indices = vqvae.img_to_indices(img)        # [(B, p_k²)] for the 10 scales of 256 px
    rec = vqvae.indices_to_img(indices)        # (B, 3, 256, 256) in [−1, 1]
    fast = CompiledDecoding(vqvae)             # the sampler's fast decoder: sample(model, fast, ...) (on CUDA
                                               # the default through hmar_model.fast_sampler)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quant import MultiScaleQuantizer, fp32
from .schedules import PATCH_NUMS


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096  # V, codebook entries
    z_channels: int = 32  # Cvae, latent channels (encoder output = codebook width)
    ch: int = 160  # base channel count
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # per level; len − 1 stride-2 stages → 16× downsampling
    num_res_blocks: int = 2  # encoder ResnetBlocks per level (the decoder has one more)
    num_phis: int = 4  # shared residual convs ("share_quant_resi")
    resi_ratio: float = 0.5  # φ(h) = (1 − r)h + r·conv(h)
    patch_nums: tuple[int, ...] = field(default_factory=lambda: PATCH_NUMS[256])  # scales of the quantiser
    norm_groups: int = 32  # GroupNorm groups (eps 1e-6)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def normalize(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """shortcut(x) + conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))); 1×1 ``nin_shortcut`` iff channels change."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = normalize(cin, groups), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = normalize(cout, groups), nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h·w positions, q|k|v from one 1×1 conv, scale C^−0.5."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = normalize(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(B, 3, C, h * w).transpose(2, 3)  # (B, 3, hw, C)
        out = F.scaled_dot_product_attention(qkv[:, 0:1], qkv[:, 1:2], qkv[:, 2:3], scale=C ** -0.5)  # (B,1,hw,C)
        return x + self.proj_out(out[:, 0].transpose(1, 2).reshape(B, C, h, w))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one pixel, then 3×3 conv with stride 2 and no padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block`` ResnetBlocks, each followed by ``attn[j]`` at the lowest resolution."""

    def __init__(self, cin: int, cout: int, count: int, with_attn: bool, groups: int):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(count))
        self.attn = nn.ModuleList(AttnBlock(cout, groups) for _ in range(count)) if with_attn else nn.ModuleList()

    def forward(self, x):
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x


class Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        g, ch, mult, levels = cfg.norm_groups, cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        for i in range(levels):
            cin = ch * ((1,) + tuple(mult))[i]  # level i takes the previous level's width (ch at level 0)
            level = Level(cin, ch * mult[i], cfg.num_res_blocks, with_attn=i == levels - 1, groups=g)
            if i != levels - 1:
                level.downsample = Downsample(ch * mult[i])
            self.down.append(level)
        self.mid = Mid(ch * mult[-1], g)
        self.norm_out = normalize(ch * mult[-1], g)
        self.conv_out = nn.Conv2d(ch * mult[-1], cfg.z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Mirror of the encoder with num_res_blocks + 1 blocks per level; ``up[i]`` runs from i = last to 0."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        g, ch, mult, levels = cfg.norm_groups, cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.z_channels, ch * mult[-1], 3, 1, 1)
        self.mid = Mid(ch * mult[-1], g)
        self.up = nn.ModuleList()
        for i in range(levels):  # stored by level index; level i takes ch·mult[i+1] (the last level: its own)
            cin = ch * (mult[i + 1] if i + 1 < levels else mult[-1])
            level = Level(cin, ch * mult[i], cfg.num_res_blocks + 1, with_attn=i == levels - 1, groups=g)
            if i != 0:
                level.upsample = Upsample(ch * mult[i])
            self.up.append(level)
        self.norm_out = normalize(ch * mult[0], g)
        self.conv_out = nn.Conv2d(ch * mult[0], 3, 3, 1, 1)

    def features(self, z):
        """Everything before ``conv_out``: SiLU(GN(h)), (B, ch·mult[0], R, R)."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return F.silu(self.norm_out(h))

    def forward(self, z):
        return self.conv_out(self.features(z))


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg.vocab_size, cfg.z_channels, cfg.patch_nums, cfg.num_phis,
                                            cfg.resi_ratio)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    def _patch_nums(self, patch_nums, side: int) -> tuple[int, ...]:
        patch_nums = tuple(patch_nums or self.cfg.patch_nums)
        if patch_nums[-1] != side:
            raise ValueError(f"patch_nums {patch_nums} ends with {patch_nums[-1]} but the image gives a "
                             f"{side}×{side} latent grid (image side / {self.cfg.downsample})")
        return patch_nums

    @fp32
    def img_to_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """f = quant_conv(encoder(img)), (B, Cvae, R/16, R/16)."""
        if img_B3HW.dim() != 4 or img_B3HW.shape[1] != 3 or img_B3HW.shape[-1] % self.cfg.downsample:
            raise ValueError(f"image must be (B, 3, R, R) with R a multiple of {self.cfg.downsample}, got "
                             f"{tuple(img_B3HW.shape)}")
        return self.quant_conv(self.encoder(img_B3HW))

    @torch.no_grad()
    def img_to_indices(self, img_B3HW: torch.Tensor, patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        f = self.img_to_latent(img_B3HW)
        return self.quantize.quantize(f, self._patch_nums(patch_nums, f.shape[-1]))[0]

    @torch.no_grad()
    def img_to_fhats(self, img_B3HW: torch.Tensor, patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        f = self.img_to_latent(img_B3HW)
        return self.quantize.quantize(f, self._patch_nums(patch_nums, f.shape[-1]))[1]

    def fhat_to_img(self, f_hat: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """clamp(decoder(post_quant_conv(f̂)), −1, 1); ``chunk`` images at a time bounds the decoder's memory."""
        if chunk is None or chunk >= f_hat.shape[0]:
            return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)
        return torch.cat([self.fhat_to_img(part) for part in f_hat.split(chunk)])

    def indices_to_img(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int] | None = None,
                       last_only: bool = True):
        """Token maps → image(s) in [−1, 1] (the final one, or one per scale)."""
        patch_nums = tuple(patch_nums or self.cfg.patch_nums)
        fhats = self.quantize.indices_to_fhats(indices, patch_nums)
        return self.fhat_to_img(fhats[-1]) if last_only else [self.fhat_to_img(f) for f in fhats]

    @torch.no_grad()
    def img_to_reconstructed_img(self, img_B3HW: torch.Tensor, patch_nums: Sequence[int] | None = None,
                                 last_only: bool = True):
        fhats = self.img_to_fhats(img_B3HW, patch_nums)
        return self.fhat_to_img(fhats[-1]) if last_only else [self.fhat_to_img(f) for f in fhats]


CONV_CHANNEL_MULTIPLE = 16  # cuDNN's NHWC tensor-core convolutions want channel counts in multiples of 8


def padded_conv(conv: nn.Conv2d, x: torch.Tensor, multiple: int = CONV_CHANNEL_MULTIPLE) -> torch.Tensor:
    """``conv(x)`` computed with its output channels zero-padded to a multiple of ``multiple``, then sliced back.

    The same values: the extra filters are zeros and their outputs are dropped. Why: the decoder's last conv has 3
    output channels, and cuDNN runs a 3-channel bf16 channels-last convolution with a generic kernel (12.9 ms of the
    60 ms compiled decode of 32 images at 256 px on an H200) instead of an implicit GEMM. The padded weight is
    built from ``conv.weight`` on every call (a few kB), so it always follows the module's current weights.
    """
    extra = -conv.out_channels % multiple
    weight = F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, extra))  # (O + extra, I, kh, kw)
    bias = F.pad(conv.bias, (0, extra)) if conv.bias is not None else None
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)[:, :conv.out_channels]


class CompiledDecoding:
    """A VQVAE for the sampler whose decoder runs compiled, under ``dtype`` autocast, in channels-last layout.

    ``sample(model, CompiledDecoding(vqvae), ...)`` draws the same tokens as with ``vqvae`` (the quantiser is
    shared) and decodes them faster (H200, 256 px, 32 images: 102 ms fp32, 92 ms bf16 autocast, 60 ms bf16
    compiled before the last conv was padded, see ``padded_conv``). The images differ from the eager decoder's by
    the rounding of ``dtype``; the eager ``vqvae.fhat_to_img`` stays the reference.

    One compilation per batch size, and no more than needed: a batch smaller than one already compiled is padded
    with zero latents up to the smallest such size and the extra images are dropped (every image is decoded on its
    own, so the kept ones are the same). A generate run's smaller last batch or chunk therefore reuses the graph
    instead of compiling another one.
    """

    def __init__(self, vqvae: VQVAE, dtype: torch.dtype = torch.bfloat16, compile_backend="inductor"):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise TypeError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype}")
        self.vqvae, self.dtype = vqvae, dtype
        self.quantize, self.cfg = vqvae.quantize, vqvae.cfg
        self.compiled_batch_sizes: set[int] = set()
        self._compiled = torch.compile(self._decode, backend=compile_backend, fullgraph=True, dynamic=False)

    def _decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        with torch.autocast(f_hat.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            z = self.vqvae.post_quant_conv(f_hat.contiguous(memory_format=torch.channels_last))
            img = padded_conv(self.vqvae.decoder.conv_out, self.vqvae.decoder.features(z))
            return img.clamp(-1, 1).contiguous(memory_format=torch.channels_last)

    def _decode_batch(self, f_hat: torch.Tensor) -> torch.Tensor:
        B = f_hat.shape[0]
        size = min((s for s in self.compiled_batch_sizes if s >= B), default=B)
        if size == B:
            self.compiled_batch_sizes.add(B)
            return self._compiled(f_hat)
        padding = f_hat.new_zeros(size - B, *f_hat.shape[1:])
        return self._compiled(torch.cat((f_hat, padding)))[:B]

    def fhat_to_img(self, f_hat: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """``VQVAE.fhat_to_img`` through the compiled decoder, (B, 3, R, R) in [−1, 1] in ``dtype``."""
        if chunk is None or chunk >= f_hat.shape[0]:
            return self._decode_batch(f_hat)
        return torch.cat([self._decode_batch(part) for part in f_hat.split(chunk)])


def build_vqvae(patch_nums: Sequence[int] = PATCH_NUMS[256], device=None, **overrides) -> VQVAE:
    """vae_ch160v4096z32 with the official hyper-parameters (random weights, eval mode, no grad).

    ``patch_nums`` only sets the quantiser's default schedule (the weights do not depend on it).
    """
    cfg = VQVAEConfig(patch_nums=tuple(patch_nums), **overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        vqvae = VQVAE(cfg)
    return vqvae.eval().requires_grad_(False)

