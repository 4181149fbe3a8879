"""Device run of the CUDA forward: smoke check, then timings of cuda (every tile config and scheduler),
triton and the anchors on the real schedules; one CSV row per measurement.

    python bench/cuda_fwd.py --out results.csv [--anchors sdpa varlen flex] [--quick]

Times with hmar_bench.harness.time_cuda (CUDA events, synchronise before each repetition, median; inputs
rotated so they do not sit in L2), the same harness as hmar-bench, plus a kernel-only number: 20 calls
back-to-back between two events (no host gaps), divided by 20. Useful TFLOP/s = 4·B·H·D·(allowed pairs) / time.
"""
from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch

import hmar_kernels
from hmar_bench import harness as bm
from hmar_kernels import buffers, current_options, kernel_options
from hmar_kernels.backends import cuda
from hmar_kernels.options import CUDA_SCHEDULERS
from hmar_kernels.plan import launch_plan
from hmar_kernels.reference import reference_attention
from hmar_kernels.tiles import bits_to_matrix, named_pattern_bits, tile_mask
from hmar_bench.cli import git_commit

BATCH_HEADS = {256: (16, 16), 512: (4, 16), 1024: (4, 16)}  # as the anchor table (1024: the target's B=4, H=16)
COLUMNS = ("device", "torch", "triton", "date", "commit", "px", "L", "B", "H", "D", "dtype", "pattern", "backend",
           "variant", "fwd_ms", "kernel_ms", "fwd_tflops", "kernel_tflops", "visited_over_useful", "max_rel_err")


def pattern_bits(pattern, num_scales):
    if pattern == "dense":
        return tuple((1 << num_scales) - 1 for _ in range(num_scales))
    return named_pattern_bits(pattern, num_scales)


def kernel_only_ms(call, inputs, count=20):
    call(0)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        for i in range(count):
            call(i)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / count)
    return best


def measure(px, pattern, dtype_name, head_dim, backend, variant, reps, meta):
    pn = bm.SCHEDULES[px]
    batch, heads = BATCH_HEADS[px]
    row_bits = pattern_bits(pattern, len(pn))
    dtype = bm.DTYPES[dtype_name]
    length = sum(p * p for p in pn)
    bytes_per_set = 4 * batch * heads * length * head_dim * 2
    inputs = [tuple(torch.randn(batch, heads, length, head_dim, device="cuda", dtype=dtype) for _ in range(3))
              + (None,) for _ in range(bm.rotation_count(bytes_per_set))]
    matrix = bits_to_matrix(row_bits)
    api_pattern = pattern if pattern != "dense" else matrix

    def attend(q, k, v):
        if backend == "sdpa_nomask":  # dense FlashAttention over all L² pairs (calibration for "dense")
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return hmar_kernels.attention(q, k, v, pn, api_pattern, backend=backend)

    q, k, v, _ = inputs[0]
    with torch.no_grad():
        out = attend(q, k, v)
        ref, _ = reference_attention(q[:1, :2].float(), k[:1, :2].float(), v[:1, :2].float(), pn, row_bits,
                                     head_dim ** -0.5)
        error = bm.max_relative_error(out[:1, :2], ref)
    del ref
    call = bm.fwd_call(attend, inputs)
    fwd = bm.time_cuda(call, reps=reps)
    kernel = kernel_only_ms(call, inputs)
    flops = bm.useful_flops(pn, row_bits, batch, heads, head_dim)
    visited = ""
    if backend == "cuda":
        mask = tile_mask(pn, row_bits, *cuda.fwd_tile(head_dim, current_options().cuda_fwd_config), torch.device("cpu"))
        visited = f"{mask.visited_pairs() / mask.allowed_pairs():.3f}"
    return dict(meta, px=px, L=length, B=batch, H=heads, D=head_dim, dtype=dtype_name, pattern=pattern,
                backend=backend, variant=variant, fwd_ms=fwd.median_ms, kernel_ms=kernel,
                fwd_tflops=flops / fwd.median_ms / 1e9, kernel_tflops=flops / kernel / 1e9,
                visited_over_useful=visited, max_rel_err=error)


def host_overhead(rows_out):
    """Host time per call of each layer of the call path, on a problem small enough that the GPU keeps up:
    200 calls back-to-back, wall time / 200."""
    from hmar_kernels import ops

    pn = bm.SCHEDULES[256]
    row_bits = named_pattern_bits("block_causal", len(pn))
    q, k, v = (torch.randn(1, 1, 680, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ext = cuda.module()
    with kernel_options(cuda_fwd_config=0, cuda_scheduler="dynamic"):
        args = cuda.forward_setup(launch_plan("cuda", pn, row_bits, 0.125, q))
    out, lse = torch.empty_like(q), torch.empty(1, 1, 680, device="cuda")
    stream = buffers.current_stream(q.device.index)
    layers = {
        "ext.fwd (C++ binding + launch)": lambda: ext.fwd(q, k, v, out, lse, args, stream),
        "cuda.forward": lambda: cuda.forward(q, k, v, pn, row_bits, 0.125),
        "ops.attention_forward (custom op)": lambda: ops.attention_forward(q, k, v, pn, row_bits, 0.125, "cuda"),
        "attention(backend=cuda)": lambda: hmar_kernels.attention(q, k, v, pn, "block_causal", backend="cuda"),
        "attention(backend=triton)": lambda: hmar_kernels.attention(q, k, v, pn, "block_causal",
                                                                    backend="triton"),
    }
    with torch.no_grad():
        for name, call in layers.items():
            for _ in range(20):
                call()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(200):
                call()
            host = (time.perf_counter() - start) / 200 * 1e6
            torch.cuda.synchronize()
            total = (time.perf_counter() - start) / 200 * 1e6
            print(f"host overhead {name:36s} {host:7.1f} us/call (with GPU drain {total:7.1f})", flush=True)
            rows_out.append((name, host))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--anchors", nargs="*", default=["sdpa", "varlen"])
    parser.add_argument("--px", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="bf16 D=64 cuda/triton/anchors only")
    parser.add_argument("--dense-only", action="store_true", help="only the D=64/128 and dense rows (no anchors)")
    args = parser.parse_args()
    import triton

    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.date.today().isoformat(), commit=git_commit())
    plan = []
    for px in [] if args.dense_only else args.px:
        for pattern in ("block_diagonal", "block_causal"):
            for config in range(cuda._built()["configs"]):
                for scheduler in CUDA_SCHEDULERS if config == 0 else ("dynamic",):
                    plan.append((px, pattern, "bf16", 64, "cuda", (config, scheduler)))
            plan.append((px, pattern, "bf16", 64, "triton", None))
            for anchor in args.anchors:
                if anchor == "varlen" and pattern != "block_diagonal":
                    continue
                plan.append((px, pattern, "bf16", 64, anchor, None))
    if not args.quick:
        for px in [p for p in args.px if p >= 512]:
            for pattern in ("block_diagonal", "block_causal", "dense"):
                for config in range(cuda._built()["configs"]):
                    plan.append((px, pattern, "bf16", 128, "cuda", (config, "dynamic")))
                plan.append((px, pattern, "bf16", 128, "triton", None))
                plan.append((px, pattern, "fp16", 64, "cuda", (0, "dynamic")))
            plan.append((px, "dense", "bf16", 64, "cuda", (0, "dynamic")))
            plan.append((px, "dense", "bf16", 64, "cuda", (1, "dynamic")))
            plan.append((px, "dense", "bf16", 64, "sdpa_nomask", None))
            plan.append((px, "dense", "bf16", 128, "sdpa_nomask", None))

    rows = []
    host_overhead([])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(",".join(COLUMNS) + "\n")
        for px, pattern, dtype_name, head_dim, backend, variant in plan:
            name = "" if variant is None else f"cfg{variant[0]}-{variant[1]}"
            started = time.time()
            try:
                if variant is not None:
                    with kernel_options(cuda_fwd_config=variant[0], cuda_scheduler=variant[1]):
                        row = measure(px, pattern, dtype_name, head_dim, backend, name, args.reps, meta)
                else:
                    row = measure(px, pattern, dtype_name, head_dim, backend, name, args.reps, meta)
            except Exception as error:  # an anchor that cannot run this case (e.g. sdpa dense is fine, varlen not)
                print(f"{px} {pattern} {dtype_name} D={head_dim} {backend} {name}: {type(error).__name__}: "
                      f"{str(error)[:200]}", flush=True)
                continue
            rows.append(row)
            f.write(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS) + "\n")
            f.flush()
            print(f"{px:5d} {pattern:14s} {dtype_name} D={head_dim:<3d} {backend:7s} {name:16s} "
                  f"{row['fwd_ms']:7.3f} ms {row['fwd_tflops']:6.1f} TF | kernel {row['kernel_ms']:7.3f} ms "
                  f"{row['kernel_tflops']:6.1f} TF | err {row['max_rel_err']:.1e} ({time.time() - started:.0f}s)",
                  flush=True)


if __name__ == "__main__":
    main()
