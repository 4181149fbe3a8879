"""Small forward runs of the CUDA kernel for compute-sanitizer (memcheck, racecheck, synccheck):

    compute-sanitizer --tool memcheck --kernel-name regex:fwd_kernel_sm90 python bench/cuda_sanitize.py

Exits non-zero if an output is wrong, so a clean sanitizer report also means a correct run.
"""
import sys

import torch

from hmar_kernels import kernel_options
from hmar_kernels.backends import cuda
from hmar_kernels.reference import reference_attention
from hmar_kernels.tiles import named_pattern_bits

CASES = [  # (patch_nums, row_bits, D, config, scheduler)
    ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "block_causal", 64, 0, "dynamic"),
    ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "block_diagonal", 128, 0, "static"),
    ((1, 3, 4, 7, 12), (1, 3, 6, 13, 17), 64, 1, "grid"),  # scale 4 attends two runs: [0, 1) and [75, 219)
    # CTA-wide epilogue (one slab for both warpgroups); row tiles that start inside a scale and overlap the next
    ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "block_diagonal", 64, 2, "dynamic"),
    ((1, 3, 4, 7, 12), (1, 3, 6, 13, 17), 128, 2, "static"),
]


def main():
    failed = 0
    for pn, pattern, head_dim, config, scheduler in CASES:
        row_bits = named_pattern_bits(pattern, len(pn)) if isinstance(pattern, str) else pattern
        length = sum(p * p for p in pn)
        q, k, v = (torch.randn(1, 3, length, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        with kernel_options(cuda_fwd_config=config, cuda_scheduler=scheduler):
            out, lse = cuda.forward(q, k, v, pn, row_bits, head_dim ** -0.5)
        ref, ref_lse = reference_attention(q.double(), k.double(), v.double(), pn, row_bits, head_dim ** -0.5)
        error = (out.double() - ref).abs().max().item()
        lse_error = (lse.double() - ref_lse).abs().max().item()
        ok = error < 2e-2 and lse_error < 1e-3
        failed += not ok
        print(f"{pn} {pattern} D={head_dim} cfg{config} {scheduler}: max |out - ref| {error:.2e}, "
              f"|lse - ref| {lse_error:.2e} {'ok' if ok else 'WRONG'}", flush=True)
    torch.cuda.synchronize()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
