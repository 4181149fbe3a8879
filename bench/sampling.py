"""Sampling speed and peak memory: HMAR (with / without masked refinement) vs VAR with a KV cache.

    python bench/sampling.py --out results/sampling.csv            # H100: ≈ 4–5 min, see the plan below
    python bench/sampling.py --graphs both --dtype bf16 --depths 16 # CUDA graphs against the eager loop
    python bench/sampling.py --smoke --out /tmp/sampling.csv        # tiny models on the CPU (checks the script)

Default plan, most important first (rows pending when --time-budget seconds have passed are recorded as
"skipped"): d16 in bf16 autocast, d16 in fp32 (the paper's setting: no autocast, TF32 matmuls as the official
sampler), then d30 in bf16 (--fp32-depths adds fp32 rows of other depths), each at 256/512/1024 px, B = 32.
Random weights (official init), CFG on (2B rows through the transformer), top-k 900, top-p 0.96, cfg 1.5 (the
paper's benchmark settings); HMAR's refinement uses the official per-resolution benchmark schedules.

Both families run the same sampler (hmar_model.sampling.scale_loop): with --graphs on (default) the whole loop,
every scale and refinement pass, is one CUDA graph for HMAR and VAR alike; off is the eager loop.
"ms" is the median over repetitions (CUDA events, after the warm-up: one eager run, plus the capture and first
replay with graphs) of generating the token maps and f̂, i.e. everything but the VQVAE decoder, which is the
same for both families and is timed once per resolution and dtype in its own rows (model "vqvae_decode", decoded
in chunks of --decode-chunk images). "peak_mb" is torch.cuda.max_memory_allocated over warm-up and timed runs
(weights included; "weights_mb" is what was resident before; with graphs the capture's allocations are the
graph's pool), "reserved_mb" the allocator's peak reservation. A configuration that runs out of memory is
recorded as "OOM"; then the resolution is repeated for all three models at the --fallback-batches (skipping
those where VAR's KV cache alone exceeds the device), so that every resolution has a same-batch comparison.
The CSV is rewritten after every row (a run cut short keeps what it measured).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import gc
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmar_model import BENCHMARK_MASK_SCHEDULES, PATCH_NUMS, build_hmar, build_var, build_vqvae  # noqa: E402
from hmar_model.sampling import precision_context, release_graphs, scale_loop  # noqa: E402
from hmar_model.schedules import validate_mask_schedule  # noqa: E402
from hmar_model.tiny import TINY_PATCH_NUMS, tiny_transformer, tiny_vqvae  # noqa: E402

COLUMNS = ("device", "torch", "date", "commit", "model", "depth", "px", "batch", "dtype", "graphs", "status", "reps",
           "ms", "ms_min", "peak_mb", "reserved_mb", "weights_mb")
REPS = {256: 5, 512: 3, 1024: 2}
SETTINGS = dict(cfg=1.5, top_k=900, top_p=0.96)
TINY_SCHEDULE = ((1,), (1, 3), (1, 3, 5), (16,))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VARIANTS = {"hmar": ("hmar_refine", "hmar"), "var": ("var_kv",)}


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


def measure(run, device, reps: int, warmups: int = 1, deadline: float = math.inf) -> dict:
    """Warm up, then time up to ``reps`` runs (fewer once ``deadline`` has passed, at least one); peak memory over
    warm-up and timed runs, so that a graph's capture counts."""
    timer = Timer(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmups):
        run()
    times = []
    while len(times) < reps and (not times or time.monotonic() < deadline):
        times.append(timer(run))
    row = dict(reps=len(times), ms=round(statistics.median(times), 3), ms_min=round(min(times), 3))
    if device.type == "cuda":
        row.update(peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1),
                   reserved_mb=round(torch.cuda.max_memory_reserved() / 2**20, 1), weights_mb=round(weights / 2**20, 1))
    return row


def sampler(model, quantizer, batch: int, schedule, dtype, device, graphs: bool):
    """A closure generating one batch (labels fixed, seeded generator) with the given refinement schedule."""
    labels = torch.arange(batch, device=device) % model.num_classes
    generator = torch.Generator(device=device).manual_seed(0)
    schedule = None if schedule is None else validate_mask_schedule(schedule, model.patch_nums)

    def run():
        with torch.no_grad(), precision_context(device, dtype):
            scale_loop(model, quantizer, labels, generator=generator, mask_schedule=schedule, cuda_graphs=graphs,
                       **SETTINGS)
    return run


def is_oom(error: BaseException) -> bool:
    """Out of memory, also when it surfaces through a failed graph capture as a plain RuntimeError."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def bench_resolution(build, vqvae, depth, px, batch, dtype_name, graph_modes, device, reps, schedule_hmar, deadline,
                     emit, fallback: bool = False):
    """The sampler rows of one (depth, resolution, batch, dtype), VAR first; returns True when VAR ran out of memory.

    At a fallback batch the HMAR rows run only when VAR fitted (they exist for the same-batch comparison)."""
    var_oom, dtype = False, DTYPES[dtype_name]
    for family in ("var", "hmar"):
        base = dict(depth=depth, px=px, batch=batch, dtype=dtype_name)
        rows = [(name, graphs) for name in VARIANTS[family] for graphs in graph_modes]
        if family == "hmar" and fallback and var_oom:
            continue
        if time.monotonic() > deadline:
            for name, graphs in rows:
                emit(dict(base, model=name, graphs=graphs, status="skipped"))
            continue
        model, statuses = None, []
        try:
            model = build(family, depth, PATCH_NUMS.get(px, TINY_PATCH_NUMS), device)
            for name, graphs in rows:
                row = dict(base, model=name, graphs=graphs)
                if time.monotonic() > deadline:
                    row["status"] = "skipped"
                else:
                    run = sampler(model, vqvae.quantize, batch, schedule_hmar if name == "hmar_refine" else None,
                                  dtype, device, graphs)
                    try:
                        row.update(measure(run, device, reps, 2 if graphs else 1, deadline), status="ok")
                    except RuntimeError as error:  # OOM, or a failed capture: keep the other rows
                        row["status"] = "OOM" if is_oom(error) else f"error: {str(error).splitlines()[0][:80]}"
                    # outside the except block: its traceback still holds the failed run's tensors
                    release_graphs(model)
                    free_memory()
                statuses.append(row["status"])
                emit(row)
        except torch.cuda.OutOfMemoryError:  # the weights alone do not fit
            for name, graphs in rows:
                statuses.append("OOM (weights)")
                emit(dict(base, model=name, graphs=graphs, status=statuses[-1]))
        del model
        free_memory()
        var_oom |= family == "var" and any(status.startswith("OOM") for status in statuses)
    return var_oom


def bench_decode(vqvae, px, batch, chunk, dtype_name, device, reps, emit):
    P = PATCH_NUMS.get(px, TINY_PATCH_NUMS)[-1]
    f_hat = torch.randn(batch, vqvae.cfg.z_channels, P, P, device=device)
    row = dict(model="vqvae_decode", depth=0, px=px, batch=batch, dtype=dtype_name, graphs=False)

    def run():
        with torch.no_grad(), precision_context(device, DTYPES[dtype_name]):
            vqvae.fhat_to_img(f_hat, chunk)
    try:
        row.update(measure(run, device, reps), status="ok")
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
    emit(row)
    del f_hat
    free_memory()


def kv_cache_bytes(depth: int, patch_nums, batch: int, dtype_name: str) -> int:
    """VAR's KV cache: K and V of every layer, 2B rows (CFG), L tokens, width 64·depth, in the attention dtype."""
    return 2 * depth * 2 * batch * sum(p * p for p in patch_nums) * 64 * depth * (4 if dtype_name == "fp32" else 2)


def forward_flop(patch_nums, depth: int, batch: int, schedule=None, kv_cache: bool = False, vocab: int = 4096):
    """Forward FLOPs of one generation (2B rows): every block's linears (24·C² per token) and attention
    (4·D per query-key pair and head; HMAR: the scale's own tokens, VAR: every cached key), the head, the
    per-sample AdaLN linears; refinement passes run the same depth again. Sampling and elementwise work excluded."""
    C, rows, total, cached = 64 * depth, 2 * batch, 0, 0
    for si, p in enumerate(patch_nums):
        n = p * p
        cached += n
        keys = cached if kv_cache else n
        step = rows * (n * (depth * 24 * C * C + 2 * C * vocab) + 4 * 64 * depth * depth * n * keys
                       + 2 * C * C * (6 * depth + 2))
        total += step * (len(schedule[si]) if schedule is not None and n > 1 else 1)
    return total


def print_table(rows, schedules):
    print(f"{'model':14s} {'d':>3s} {'px':>5s} {'B':>3s} {'dtype':>5s} {'graphs':>6s} {'status':>8s} {'ms':>10s} "
          f"{'peak MB':>10s} {'weights MB':>10s}")
    for r in rows:
        print(f"{r['model']:14s} {r['depth']:>3} {r['px']:>5} {r['batch']:>3} {r['dtype']:>5} {str(r['graphs']):>6} "
              f"{r['status'][:8]:>8s} {r.get('ms', ''):>10} {r.get('peak_mb', ''):>10} {r.get('weights_mb', ''):>10}")
    key = ("model", "depth", "px", "batch", "dtype", "graphs")
    by = {tuple(r[k] for k in key): r for r in rows if r["status"] == "ok"}
    print("\nHMAR vs VAR (KV cache), same depth / px / batch / dtype / graphs "
          "(FLOPs: VAR's forward FLOPs over HMAR's):")
    for key, var in sorted(((k, v) for k, v in by.items() if k[0] == "var_kv"), key=lambda kv: kv[0][1:]):
        _, depth, px, batch, dtype, graphs = key
        for hmar_name in VARIANTS["hmar"]:
            h = by.get((hmar_name, *key[1:]))
            if h:
                mem = f", memory {var['peak_mb'] / h['peak_mb']:.2f}x lower" if "peak_mb" in h else ""
                flop = ""
                if px in PATCH_NUMS:  # the official widths (64·depth), not the tiny smoke models
                    schedule = schedules.get(px) if hmar_name == "hmar_refine" else None
                    ratio = (forward_flop(PATCH_NUMS[px], depth, batch, kv_cache=True)
                             / forward_flop(PATCH_NUMS[px], depth, batch, schedule))
                    flop = f" (FLOPs {ratio:.2f}x)"
                print(f"  d{depth} {px}px B={batch} {dtype} graphs={'on' if graphs else 'off':3s} {hmar_name:11s}: "
                      f"{var['ms'] / h['ms']:.2f}x faster{mem}{flop}")
    pairs = [(k, r, by.get((*k[:5], True))) for k, r in by.items() if not k[5]]
    if any(g for _, _, g in pairs):
        print("\nCUDA graphs vs eager loop:")
        for (name, depth, px, batch, dtype, _), eager, graphed in sorted(pairs, key=lambda t: t[0][1:5] + t[0][:1]):
            if graphed:
                print(f"  {name:12s} d{depth} {px}px B={batch} {dtype}: {eager['ms']:.1f} -> {graphed['ms']:.1f} ms "
                      f"({eager['ms'] / graphed['ms']:.2f}x)")


def write_csv(path: Path, rows, meta):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**meta, **row})
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/sampling.csv", help="CSV to write")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"],
                        help="bf16/fp16: autocast; fp32: none (the paper's setting)")
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 30], help="depths of the bf16/fp16 rows")
    parser.add_argument("--fp32-depths", type=int, nargs="*", default=[16], help="depths of the fp32 rows")
    parser.add_argument("--graphs", choices=("on", "off", "both"), default="on",
                        help="replay the scale loop as a CUDA graph (both samplers alike), the eager loop, or both")
    parser.add_argument("--px", type=int, nargs="+", default=[256, 512, 1024], choices=sorted(PATCH_NUMS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--fallback-batches", type=int, nargs="*", default=[16, 8])
    parser.add_argument("--decode-chunk", type=int, default=8)
    parser.add_argument("--time-budget", type=float, default=300.0, help="seconds; later rows are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script only")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.time_budget
    graph_modes = {"on": [True], "off": [False], "both": [False, True]}[args.graphs]

    if args.smoke:
        device, graph_modes = torch.device("cpu"), [False]
        plan, resolutions, batch, fallbacks, reps = [(3, "fp32")], [16], 2, [], {16: 2}
        vqvae = tiny_vqvae().to(device)
        build = lambda family, depth, pn, dev: tiny_transformer(family, pn, device=dev, depth=depth).eval()  # noqa
        schedules = {16: TINY_SCHEDULE}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/sampling.py needs a CUDA device (use --smoke to check it on a CPU)")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        depths_of = lambda dt: args.fp32_depths if dt == "fp32" else args.depths  # noqa: E731
        plan = [(d, dt) for d in sorted({*args.depths, *args.fp32_depths}) for dt in args.dtype if d in depths_of(dt)]
        resolutions, batch, fallbacks, reps = args.px, args.batch, args.fallback_batches, REPS
        vqvae = build_vqvae(device=device)
        builders = {"hmar": build_hmar, "var": build_var}
        build = lambda family, depth, pn, dev: builders[family](depth, pn, device=dev).eval()  # noqa: E731
        schedules = BENCHMARK_MASK_SCHEDULES

    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=source_version())
    out, rows, decoded = Path(args.out), [], set()

    def emit(row):
        rows.append(row)
        write_csv(out, rows, meta)
        print(f"  {row['model']:13s} d{row['depth']:<3} {row['px']}px B={row['batch']:<3} {row['dtype']:5s} "
              f"graphs={'on ' if row['graphs'] else 'off'} {row['status']:8s} {row.get('ms', '')} ms, "
              f"peak {row.get('peak_mb', '-')} MB", flush=True)

    for depth, dtype_name in plan:
        for px in resolutions:
            if (px, dtype_name) not in decoded and time.monotonic() < deadline:
                decoded.add((px, dtype_name))
                bench_decode(vqvae, px, batch, args.decode_chunk, dtype_name, device, min(reps[px], 2), emit)
            pn = PATCH_NUMS.get(px, TINY_PATCH_NUMS)
            for i, b in enumerate([batch] + list(fallbacks)):
                kv = kv_cache_bytes(depth, pn, b, dtype_name)
                if i > 0 and device.type == "cuda" and kv > torch.cuda.get_device_properties(device).total_memory:
                    print(f"  skip B={b}: VAR's KV cache alone needs {kv / 2**30:.0f} GiB", flush=True)
                    continue
                if not bench_resolution(build, vqvae, depth, px, b, dtype_name, graph_modes, device, reps[px],
                                        schedules[px], deadline, emit, fallback=i > 0):
                    break

    print()
    print_table(rows, schedules)
    print(f"\nwrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
