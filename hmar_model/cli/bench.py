"""hmar-bench: attention sweep (backends × patterns × schedules × dtypes × head dims) on the local GPU.

Writes results/<gpu>/attention.csv with one row per (schedule, pattern, dtype, D, backend).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

import hmar_kernels
from hmar_kernels import benchmark as bm
from hmar_kernels.api import _plan
from hmar_kernels.reference import reference_attention

SCHEDULES = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COLUMNS = ("device", "torch", "triton", "date", "commit", "px", "L", "B", "H", "D", "dtype", "pattern", "backend",
           "fwd_ms", "fwdbwd_ms", "fwd_tflops", "fwdbwd_tflops", "peak_mem_mb", "max_rel_err")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def make_inputs(batch, heads, length, head_dim, dtype, sets):
    """``sets`` independent (q, k, v, dout) sets; q, k, v are leaves that require grad."""
    out = []
    for _ in range(sets):
        q, k, v = (torch.randn(batch, heads, length, head_dim, device="cuda", dtype=dtype, requires_grad=True)
                   for _ in range(3))
        out.append((q, k, v, torch.randn_like(q)))
    return out


def measure(px, pattern, backend, dtype_name, batch, heads, head_dim, reps):
    """One CSV row (dict) for one configuration, or None when the backend does not support it."""
    patch_nums = SCHEDULES[px]
    dtype = DTYPES[dtype_name]
    length = sum(p * p for p in patch_nums)
    try:
        _, row_bits, scale, _ = _plan(patch_nums, pattern, None, backend, torch.device("cuda", 0), dtype,
                                      (batch, heads, length, head_dim))
    except ValueError:
        return None
    bytes_per_set = 4 * batch * heads * length * head_dim * torch.finfo(dtype).bits // 8
    inputs = make_inputs(batch, heads, length, head_dim, dtype, bm.rotation_count(bytes_per_set))

    def attend(q, k, v):
        return hmar_kernels.attention(q, k, v, patch_nums, pattern, backend=backend)

    q, k, v, _ = inputs[0]
    with torch.no_grad():
        out = attend(q, k, v)
        ref, _ = reference_attention(q.float(), k.float(), v.float(), patch_nums, row_bits, scale)
    error = bm.max_relative_error(out, ref)
    del ref
    fwd = bm.time_cuda(bm.fwd_call(attend, inputs), reps=reps)
    fwdbwd = bm.time_cuda(bm.fwd_bwd_call(attend, inputs), reps=reps)
    peak = bm.peak_memory_mb(lambda: bm.fwd_bwd_call(attend, inputs)(0))
    flops = bm.useful_flops(patch_nums, row_bits, batch, heads, head_dim)
    return dict(px=px, L=length, B=batch, H=heads, D=head_dim, dtype=dtype_name, pattern=pattern, backend=backend,
                fwd_ms=fwd.median_ms, fwdbwd_ms=fwdbwd.median_ms,
                fwd_tflops=flops / fwd.median_ms / 1e9,
                fwdbwd_tflops=flops * bm.FWD_BWD_FACTOR / fwdbwd.median_ms / 1e9,
                peak_mem_mb=peak, max_rel_err=error)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="hmar-bench", description=__doc__)
    parser.add_argument("--px", type=int, nargs="+", default=[256, 512, 1024], choices=sorted(SCHEDULES))
    parser.add_argument("--patterns", nargs="+", default=["block_diagonal", "block_causal"])
    parser.add_argument("--backends", nargs="+", default=["triton", "sdpa", "flex", "varlen"])
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=sorted(DTYPES))
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default results/<gpu>/attention.csv)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("hmar-bench: no CUDA device here")
    import triton

    device = torch.cuda.get_device_name()
    meta = dict(device=device, torch=torch.__version__, triton=triton.__version__,
                date=datetime.date.today().isoformat(), commit=git_commit())
    rows = []
    for px in args.px:
        for pattern in args.patterns:
            for dtype_name in args.dtypes:
                for head_dim in args.head_dims:
                    for backend in args.backends:
                        row = measure(px, pattern, backend, dtype_name, args.batch, args.heads, head_dim,
                                      args.reps)
                        if row is None:
                            continue
                        rows.append({**meta, **row})
                        print(f"{px:5d} {pattern:15s} {dtype_name} D={head_dim:<4d} {backend:8s} "
                              f"fwd {row['fwd_ms']:8.3f} ms {row['fwd_tflops']:6.1f} TF | "
                              f"fwd+bwd {row['fwdbwd_ms']:8.3f} ms {row['fwdbwd_tflops']:6.1f} TF | "
                              f"err {row['max_rel_err']:.1e}", flush=True)
    out = args.out or Path("results") / device.replace(" ", "_") / "attention.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.write(",".join(COLUMNS) + "\n")
        for row in rows:
            f.write(",".join(str(row[c]) if not isinstance(row[c], float) else f"{row[c]:.6g}" for c in COLUMNS)
                    + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
