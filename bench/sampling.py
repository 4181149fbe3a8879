"""Sampling speed and peak memory: HMAR (with / without masked refinement) vs VAR with a KV cache.

    python bench/sampling.py --out results/sampling.csv            # H100: d16 + d30, B = 32, 256/512/1024 px
    python bench/sampling.py --smoke --out /tmp/sampling.csv        # tiny models on the CPU (checks the script)

Random weights (official init), bf16 autocast by default, CFG on (2B rows through the transformer), top-k 900,
top-p 0.96, cfg 1.5. "ms" is the median over repetitions (CUDA events, after one warm-up) of generating the
token maps and f̂, i.e. everything but the VQVAE decoder, which is the same for both families and is timed once
per resolution in its own rows (model "vqvae_decode", decoded in chunks of --decode-chunk images).
"peak_mb" is torch.cuda.max_memory_allocated over the measured runs (weights included; "weights_mb" is what was
resident before the run). A configuration that runs out of memory is recorded as "OOM"; then the resolution is
repeated for all three models at the --fallback-batches, so that every resolution has a same-batch comparison.
Rows still pending when --time-budget seconds have passed are recorded as "skipped".
"""
from __future__ import annotations

import argparse
import csv
import datetime
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmar_model import BENCHMARK_MASK_SCHEDULES, PATCH_NUMS, build_hmar, build_var, build_vqvae  # noqa: E402
from hmar_model.sampling import generate, precision_context, refinement_hook  # noqa: E402
from hmar_model.schedules import validate_mask_schedule  # noqa: E402
from hmar_model.tiny import TINY_PATCH_NUMS, tiny_transformer, tiny_vqvae  # noqa: E402

COLUMNS = ("device", "torch", "date", "commit", "model", "depth", "px", "batch", "dtype", "status", "reps", "ms",
           "ms_min", "peak_mb", "weights_mb")
REPS = {256: 5, 512: 3, 1024: 2}
SETTINGS = dict(cfg=1.5, top_k=900, top_p=0.96)
TINY_SCHEDULE = ((1,), (1, 3), (1, 3, 5), (16,))


def source_version() -> str:
    """``git describe --always --dirty`` of the checkout (uncommitted changes show as -dirty)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


class Timer:
    """CUDA events on a GPU (no host sync inside the timed region), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(run, device, reps: int) -> dict:
    """Warm up once, then time ``reps`` runs; peak memory over the timed runs."""
    timer = Timer(device)
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = [timer(run) for _ in range(reps)]
    row = dict(reps=reps, ms=round(statistics.median(times), 3), ms_min=round(min(times), 3))
    if device.type == "cuda":
        row.update(peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1), weights_mb=round(weights / 2**20, 1))
    return row


def sampler(model, quantizer, batch: int, schedule, dtype, device):
    """A closure generating one batch (labels fixed, seeded generator) with the given refinement schedule."""
    labels = torch.arange(batch, device=device) % model.num_classes
    generator = torch.Generator(device=device).manual_seed(0)
    hook = None
    if schedule is not None and any(len(c) > 1 for c in schedule):
        hook = refinement_hook(model, quantizer, validate_mask_schedule(schedule, model.patch_nums),
                               cfg=SETTINGS["cfg"], refine_guidance=None, top_k=SETTINGS["top_k"],
                               top_p=SETTINGS["top_p"], generator=generator)

    def run():
        with torch.no_grad(), precision_context(device, dtype):
            generate(model, quantizer, labels, generator=generator, scale_hook=hook, **SETTINGS)
    return run


def bench_resolution(build, vqvae, depth, px, batch, dtype, device, reps, schedule_hmar, deadline, emit):
    """The three sampler rows of one (depth, resolution, batch); returns True when any of them ran out of memory."""
    oom = False
    for family in ("hmar", "var"):
        variants = (("hmar_refine", schedule_hmar), ("hmar", None)) if family == "hmar" else (("var_kv", None),)
        if time.monotonic() > deadline:
            for name, _ in variants:
                emit(dict(model=name, depth=depth, px=px, batch=batch, status="skipped"))
            continue
        model = None
        try:
            model = build(family, depth, PATCH_NUMS.get(px, TINY_PATCH_NUMS), device)
            for name, schedule in variants:
                row = dict(model=name, depth=depth, px=px, batch=batch)
                try:
                    row.update(measure(sampler(model, vqvae.quantize, batch, schedule, dtype, device), device, reps),
                               status="ok")
                except torch.cuda.OutOfMemoryError:
                    row["status"], oom = "OOM", True
                free_memory()  # outside the except block: its traceback still holds the failed run's tensors
                emit(row)
        except torch.cuda.OutOfMemoryError:  # the weights alone do not fit
            oom = True
            for name, _ in variants:
                emit(dict(model=name, depth=depth, px=px, batch=batch, status="OOM (weights)"))
        del model
        free_memory()
    return oom


def bench_decode(vqvae, px, batch, chunk, dtype, device, reps, emit):
    P = PATCH_NUMS.get(px, TINY_PATCH_NUMS)[-1]
    f_hat = torch.randn(batch, vqvae.cfg.z_channels, P, P, device=device)
    row = dict(model="vqvae_decode", depth=0, px=px, batch=batch)
    def run():
        with torch.no_grad(), precision_context(device, dtype):
            vqvae.fhat_to_img(f_hat, chunk)
    try:
        row.update(measure(run, device, reps), status="ok")
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
    emit(row)
    del f_hat
    free_memory()


def print_table(rows):
    print(f"{'model':14s} {'d':>3s} {'px':>5s} {'B':>3s} {'status':>8s} {'ms':>10s} {'peak MB':>10s} "
          f"{'weights MB':>10s}")
    for r in rows:
        print(f"{r['model']:14s} {r['depth']:>3} {r['px']:>5} {r['batch']:>3} {r['status']:>8s} "
              f"{r.get('ms', ''):>10} {r.get('peak_mb', ''):>10} {r.get('weights_mb', ''):>10}")
    by = {(r["model"], r["depth"], r["px"], r["batch"]): r for r in rows if r["status"] == "ok"}
    print("\nHMAR vs VAR (KV cache), same depth / px / batch:")
    for (name, depth, px, batch), var in sorted(((k, v) for k, v in by.items() if k[0] == "var_kv"),
                                                key=lambda kv: kv[0][1:]):
        for hmar_name in ("hmar_refine", "hmar"):
            h = by.get((hmar_name, depth, px, batch))
            if h:
                mem = f", memory {var['peak_mb'] / h['peak_mb']:.2f}x lower" if "peak_mb" in h else ""
                print(f"  d{depth} {px}px B={batch} {hmar_name:11s}: {var['ms'] / h['ms']:.2f}x faster{mem}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/sampling.csv", help="CSV to write")
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 30])
    parser.add_argument("--px", type=int, nargs="+", default=[256, 512, 1024], choices=sorted(PATCH_NUMS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--fallback-batches", type=int, nargs="*", default=[16, 8])
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--decode-chunk", type=int, default=8)
    parser.add_argument("--time-budget", type=float, default=330.0, help="seconds; later rows are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script only")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    deadline = time.monotonic() + args.time_budget

    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        depths, resolutions, batch, fallbacks, reps = [3], [16], 2, [], {16: 2}
        vqvae = tiny_vqvae().to(device)
        build = lambda family, depth, pn, dev: tiny_transformer(family, pn, device=dev, depth=depth).eval()  # noqa
        schedules = {16: TINY_SCHEDULE}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/sampling.py needs a CUDA device (use --smoke to check it on a CPU)")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        depths, resolutions, batch, fallbacks, reps = args.depths, args.px, args.batch, args.fallback_batches, REPS
        vqvae = build_vqvae(device=device)
        builders = {"hmar": build_hmar, "var": build_var}
        build = lambda family, depth, pn, dev: builders[family](depth, pn, device=dev).eval()  # noqa: E731
        schedules = BENCHMARK_MASK_SCHEDULES

    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=source_version(),
                dtype="fp32" if dtype == torch.float32 else args.dtype)
    rows = []

    def emit(row):
        rows.append(row)
        print(f"  {row['model']:13s} d{row['depth']:<3} {row['px']}px B={row['batch']:<3} {row['status']:8s} "
              f"{row.get('ms', '')} ms, peak {row.get('peak_mb', '-')} MB", flush=True)

    for px in resolutions:
        bench_decode(vqvae, px, batch, args.decode_chunk, dtype, device, min(reps[px], 2), emit)
        for depth in depths:
            for b in [batch] + list(fallbacks):
                if not bench_resolution(build, vqvae, depth, px, b, dtype, device, reps[px], schedules[px], deadline,
                                        emit):
                    break

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**meta, **row})
    os.replace(tmp, out)
    print()
    print_table(rows)
    print(f"\nwrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
