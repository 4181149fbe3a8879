"""Device run of the CUDA backward's tile configs at the training steps' attention shapes (bf16, D = 64):
which config the `cuda` backend should use where, and what it would save per training step.

    python bench/cuda_bwd.py --out cuda_bwd.csv [--px 256 512 1024] [--patterns block_diagonal]

For every config in this build (``hmar_kernels._C.built()["bwd_configs"]``; a dev build keeps only the default)
one row: the forward + backward of one layer's attention replayed from a CUDA graph (kernel time, no host path;
median of ``time_cuda``), useful TFLOP/s (3.5 × the forward's), and the largest relative difference of dq, dk, dv
from the default config's (whose values the GPU tests check against float64). Shapes are the e2e training rows'
(d16: 256 px B = 32, 512 px B = 16, 1024 px B = 8; H = 16).
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

import hmar_kernels
from hmar_bench import harness as bm
from hmar_kernels import kernel_options
from hmar_kernels.backends import cuda
from hmar_kernels.tiles import named_pattern_bits

BATCH = {256: 32, 512: 16, 1024: 8}  # the e2e training rows' batches (d16)
HEADS, HEAD_DIM = 16, 64
COLUMNS = ("device", "torch", "date", "commit", "px", "B", "H", "D", "pattern", "bwd_config", "deterministic",
           "fwdbwd_graph_ms", "fwdbwd_tflops", "max_rel_diff_vs_default")


def measure(px: int, pattern: str, config: int, inputs: list, reference: tuple | None):
    pn = bm.SCHEDULES[px]

    def attend(q, k, v):
        return hmar_kernels.attention(q, k, v, pn, pattern, backend="cuda")

    with kernel_options(cuda_bwd_config=config):
        grads = bm.run_fwd_bwd(attend, inputs[0])[1:]
        replay, _ = bm.graph_replays(lambda sets: bm.fwd_bwd_call(attend, sets), inputs)
        timing = bm.time_cuda(replay)
    diff = 0.0 if reference is None else max(bm.max_relative_error(g, r) for g, r in zip(grads, reference))
    flops = bm.FWD_BWD_FACTOR * bm.useful_flops(pn, named_pattern_bits(pattern, len(pn)), BATCH[px], HEADS, HEAD_DIM)
    return grads, timing.median_ms, flops / timing.median_ms / 1e9, diff


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--px", type=int, nargs="+", default=[256, 512, 1024], choices=sorted(BATCH))
    parser.add_argument("--patterns", nargs="+", default=["block_diagonal"], choices=bm.PATTERNS)
    args = parser.parse_args()
    ext = cuda.module()
    default = ext.bwd_default_config
    # the default first: the others are compared with it
    configs = sorted(cuda._built()["bwd_configs"], key=lambda c: c != default)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=datetime.date.today().isoformat(),
                commit=bm.git_commit())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(",".join(COLUMNS) + "\n")
        for px in args.px:
            length = sum(p * p for p in bm.SCHEDULES[px])
            shape = (BATCH[px], HEADS, length, HEAD_DIM)
            sets = bm.rotation_count(4 * 2 * BATCH[px] * HEADS * length * HEAD_DIM)
            inputs = [tuple(torch.randn(shape, device="cuda", dtype=torch.bfloat16).requires_grad_(i < 3)
                            for i in range(4)) for _ in range(sets)]
            for pattern in args.patterns:
                reference = None
                for config in configs:
                    grads, ms, tflops, diff = measure(px, pattern, config, inputs, reference)
                    reference = grads if config == default else reference
                    row = dict(meta, px=px, B=BATCH[px], H=HEADS, D=HEAD_DIM, pattern=pattern, bwd_config=config,
                               deterministic=bool(ext.bwd_tile(HEAD_DIM, config)[2]), fwdbwd_graph_ms=ms,
                               fwdbwd_tflops=tflops, max_rel_diff_vs_default=diff)
                    f.write(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c])
                                     for c in COLUMNS) + "\n")
                    f.flush()
                    marker = " (default)" if config == default else ""
                    print(f"{px:5d} B={BATCH[px]:<3d} {pattern:14s} bwd config {config}{marker}: {ms:7.3f} ms "
                          f"{tflops:6.1f} TF/s, grads vs default {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
