"""Autotune the Triton kernels at the real schedules and print every candidate's time (GPU only).

    python bench/tuning_report.py [--px 1024] [--dtype bf16] [--head-dim 64]
"""
import argparse

import torch

import hmar_kernels
from hmar_bench.harness import SCHEDULES
from hmar_kernels.backends.triton import tuning


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--px", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--patterns", nargs="+", default=["block_diagonal", "block_causal"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    for px in args.px:
        pn = SCHEDULES[px]
        shape = (args.batch, args.heads, sum(p * p for p in pn), args.head_dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
        for pattern in args.patterns:
            out = hmar_kernels.attention(q, k, v, pn, pattern, backend="triton")
            torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    for (kind, pn, bits, d, dt, _), (best, times) in tuning.tuned_configs().items():
        pattern = hmar_kernels.tiles.pattern_name(bits)
        print(f"{kind} L={sum(p * p for p in pn)} {pattern} D={d} {dt}: best {best}")
        for config, ms in sorted(times.items(), key=lambda kv: kv[1]):
            print(f"    {ms:8.3f} ms  {config}")


if __name__ == "__main__":
    main()
