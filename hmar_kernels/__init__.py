"""Block-sparse attention kernels for multi-scale (next-scale) image generation.

    import hmar_kernels
    out = hmar_kernels.attention(q, k, v, patch_nums, pattern="block_diagonal")
"""
from .api import BACKENDS, attention
from .options import KernelOptions, current_options, kernel_options, using_options
from .reference import reference_attention
from .tiles import TileMask, allowed_pairs, dense_mask, named_pattern_bits, tile_mask

__all__ = ["attention", "BACKENDS", "kernel_options", "KernelOptions", "current_options", "using_options",
           "reference_attention",
           "TileMask", "tile_mask", "allowed_pairs", "dense_mask", "named_pattern_bits"]
