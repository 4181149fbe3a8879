"""hmar-bench: the attention sweep (backends × patterns × schedules × dtypes × head dims) on the local GPU.

    hmar-bench                                  # full sweep → results/<gpu>/attention.csv + PNG plots
    hmar-bench --quick                          # same grid, 5 reps, default Triton configs (no autotuning)
    hmar-bench --px 1024 --backends triton      # refresh some rows: rows with the same key are replaced
    hmar-bench --results $OUT                   # write under $OUT/<gpu>/ instead of results/<gpu>/

Every row is timed by hmar_bench.harness twice: fwd_ms / fwdbwd_ms from an idle GPU (CUDA events, median
after warm-up, rotated inputs, host overhead included), and *_steady_* back to back as triton.testing.do_bench
(the methodology of the anchors in docs/benchmarks.md; host overhead hidden behind the previous call's GPU work),
and *_graph_* as replays of the forward and of the forward+backward captured once in a CUDA graph (kernel time
without the host path: what sets the 256 px rows; --no-graph skips it; a backend that cannot be captured gets
empty cells and one line saying why).
max_rel_err is the largest relative error of out, dq, dk, dv against the fp32 reference. The
"dense_fa" rows (pattern "dense") are SDPA FlashAttention with no mask, TFLOP/s over all L² pairs: the measured
dense rate that the plots draw as the reference line. Backends that cannot run a case are skipped with one line
saying why. Without a GPU, hmar-bench says so and runs a short CPU correctness sweep (reference vs the Triton
interpreter) instead.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import math
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from hmar_bench import e2e
from hmar_bench import harness as bm
from hmar_bench.harness import git_commit

COLUMNS = ("device", "torch", "triton", "date", "commit", "px", "L", "B", "H", "D", "dtype", "pattern", "backend",
           "fwd_ms", "fwdbwd_ms", "fwd_tflops", "fwdbwd_tflops", "peak_mem_mb", "max_rel_err", "first_call_s",
           "fwd_steady_ms", "fwdbwd_steady_ms", "fwd_steady_tflops", "fwdbwd_steady_tflops", *bm.GRAPH_COLUMNS)
KEY = ("px", "L", "B", "H", "D", "dtype", "pattern", "backend")  # rows with the same key replace each other

# Small schedules for the CPU sweep: the interpreter takes ~25 s per case at 256 px, ~2 s at L = 155.
CPU_SCHEDULES = ((1, 2, 3, 4), (1, 2, 3, 5, 7))
CPU_DTYPES = ("fp32", "fp16")
CPU_BACKENDS = ("cuda", "triton", "varlen")

# End-to-end benches (--e2e): model builders by kind. VAR trains with the block-causal mask, HMAR (next-scale
# model for training, composite model with its default refinement schedule for sampling) with block-diagonal.
E2E_MODELS = {"train": {"var": "hmar_model.var:build_var", "hmar": "hmar_model.hmar:build_hmar_nsp"},
              "infer": {"var": "hmar_model.var:build_var", "hmar": "hmar_model.hmar:build_hmar"}}

def gpu_slug(name: str) -> str:
    """Folder name of a GPU: 'NVIDIA H100 80GB HBM3' → 'nvidia-h100', 'NVIDIA H200' → 'nvidia-h200'."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    vendor = words[0] if words and words[0] in ("nvidia", "amd") else ""
    model = next((w for w in words if re.fullmatch(r"[a-z]+\d{2,4}[a-z]*", w) and w != vendor), None)
    if model is None:
        return "-".join(words) or "unknown"
    return f"{vendor}-{model}" if vendor else model


# ----------------------------------------------------------------------------------------------------- CSV
def _format(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_rows(path: Path, rows: list[dict], columns=COLUMNS, key=KEY, merge: bool = True) -> list[dict]:
    """Write ``rows`` to the CSV at ``path``; with ``merge``, keep the rows already there whose key differs.

    Returns all rows written (as strings). A refresh of some backends thus leaves the others' rows in place.
    """
    table: dict[tuple, dict] = {}
    if merge and path.exists():
        with open(path, newline="") as f:
            for old in csv.DictReader(f):
                table[tuple(old.get(c, "") for c in key)] = old
    for row in rows:
        text = {c: _format(row.get(c, "")) for c in columns}
        table[tuple(text[c] for c in key)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(table.values())
    tmp.replace(path)
    return list(table.values())


# ------------------------------------------------------------------------------------------------ progress
class Progress:
    """One line per finished step: a bar, count, elapsed time and a naive ETA (log-friendly: no carriage returns)."""

    def __init__(self, total: int, width: int = 20):
        self.total, self.width, self.done, self.start = max(total, 1), width, 0, time.perf_counter()

    def step(self, message: str):
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        print(f"[{bar}] {self.done:3d}/{self.total} {_clock(elapsed)} eta {_clock(eta)} | {message}", flush=True)


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


# --------------------------------------------------------------------------------------------------- sweep
def sweep_cases(args) -> list[list[bm.AttentionCase]]:
    """Cases grouped by input shape (px, dtype, D): one input allocation serves a group."""
    groups = []
    for px in args.px:
        for dtype in args.dtypes:
            for head_dim in args.head_dims:
                group = []
                for pattern in args.patterns:
                    group += [bm.AttentionCase.at(px, pattern, b, dtype, args.batch, args.heads, head_dim)
                              for b in args.backends if b != bm.DENSE_BACKEND]
                if bm.DENSE_BACKEND in args.backends:
                    group.append(bm.AttentionCase.at(px, bm.DENSE_PATTERN, bm.DENSE_BACKEND, dtype, args.batch,
                                                     args.heads, head_dim))
                groups.append(group)
    return groups


def run_sweep(args, device: torch.device, meta: dict | None = None, on_group=None
              ) -> tuple[list[dict], dict, list[str]]:
    """Measure every available case: (rows, phase seconds by (phase, backend), failures).

    Rows get ``meta``'s columns; ``on_group(rows)`` receives each input shape's rows as soon as they are measured
    (the CLI writes them, so a run cut short keeps what it measured). Past ``args.time_budget`` seconds no new
    case starts; those left are listed.
    """
    deadline = time.perf_counter() + args.time_budget if args.time_budget else math.inf
    groups = sweep_cases(args)
    runnable, skipped = [], {}
    for group in groups:
        keep = []
        for case in group:
            why = case.unavailable(device)
            if why is None:
                keep.append(case)
            else:
                skipped.setdefault((case.backend, why), case)
        runnable.append(keep)
    for (backend, why), case in skipped.items():
        print(f"skip {backend}: {why} (first case: {case.label()})", flush=True)

    phases: dict = defaultdict(float)
    rows, failures, left = [], [], []
    not_captured: set = set()  # (backend, why) already printed
    progress = Progress(sum(len(g) for g in runnable))
    for group in runnable:
        if not group:
            continue
        if time.perf_counter() > deadline:
            left += group
            continue
        start = time.perf_counter()
        inputs = bm.make_inputs(group[0], device)
        phases["inputs", ""] += time.perf_counter() - start
        references, group_rows = {}, []
        for case in group:
            if time.perf_counter() > deadline:
                left.append(case)
                continue
            try:
                if case.pattern not in references:
                    start = time.perf_counter()
                    references = {case.pattern: bm.reference_outputs(case, inputs[0])}  # one pattern at a time
                    bm.synchronize(device)
                    phases["reference", ""] += time.perf_counter() - start
                row, spent = bm.measure_case(case, inputs, references[case.pattern], args.reps, args.warmup)
            except Exception as error:  # one broken backend (OOM, compile error) must not end the sweep
                first_line = (str(error).splitlines() or [""])[0][:200]
                failures.append(f"{case.label()}: {type(error).__name__}: {first_line}")
                progress.step(f"{case.label():40s} FAILED ({type(error).__name__})")
                torch.cuda.empty_cache()
                continue
            for phase, seconds in spent.items():
                phases[phase, case.backend] += seconds
            if args.graph:
                row.update(graph_columns(case, inputs, args, phases, not_captured))
            group_rows.append({**(meta or {}), **row})
            progress.step(f"{case.label():44s} fwd {row['fwd_ms']:8.3f} ms {row['fwd_tflops']:6.1f} TF | "
                          f"fwd+bwd {row['fwdbwd_ms']:8.3f} ms {row['fwdbwd_tflops']:6.1f} TF | steady "
                          f"{row['fwd_steady_tflops']:6.1f} / {row['fwdbwd_steady_tflops']:6.1f} TF | graph "
                          f"{row.get('fwd_graph_tflops', math.nan):6.1f} / "
                          f"{row.get('fwdbwd_graph_tflops', math.nan):6.1f} TF | "
                          f"err {row['max_rel_err']:.1e} | first call {row['first_call_s']:.1f} s")
        del inputs, references
        torch.cuda.empty_cache()
        rows += group_rows
        if on_group and group_rows:
            on_group(group_rows)
    if left:
        print(f"time budget of {args.time_budget:.0f} s reached: {len(left)} case(s) not run, from "
              f"{left[0].label()} on", flush=True)
    return rows, phases, failures


def graph_columns(case: bm.AttentionCase, inputs, args, phases: dict, not_captured: set) -> dict:
    """The case's *_graph_* columns (``bm.measure_graphs``); a backend that cannot be captured gets empty cells
    and one printed line per (backend, reason)."""
    start = time.perf_counter()
    columns, why = bm.measure_graphs(case, inputs, args.reps, args.warmup)
    phases["graphs", case.backend] += time.perf_counter() - start
    if why is not None and (case.backend, why) not in not_captured:
        not_captured.add((case.backend, why))
        print(f"no graph column for {case.backend}: cannot be captured in a CUDA graph: {why} "
              f"(first case: {case.label()})", flush=True)
    return columns


def print_table(rows: list[dict]):
    """fwd / fwd+bwd ms per backend (columns), one line per (px, pattern, dtype, D); again for the CUDA-graph
    replays when they were timed."""
    import pandas as pd

    if not rows:
        return
    df = pd.DataFrame(rows)
    for timing, title in (("", "fwd / fwd+bwd ms (median)"), ("_graph", "CUDA-graph replays: fwd / fwd+bwd ms")):
        if f"fwd{timing}_ms" not in df or df[f"fwd{timing}_ms"].isna().all():
            continue
        df["ms"] = (df[f"fwd{timing}_ms"].map("{:.3f}".format) + " / "
                    + df[f"fwdbwd{timing}_ms"].map("{:.3f}".format)).where(df[f"fwd{timing}_ms"].notna(), "-")
        table = df.pivot_table(index=["px", "pattern", "dtype", "D"], columns="backend", values="ms",
                               aggfunc="first")
        order = [b for b in bm.SWEEP_BACKENDS if b in table.columns]
        with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_columns", 20):
            print(f"\n{title}")
            print(table[order].fillna("-").to_string())


def print_phases(phases: dict, total: float):
    """Where the wall time went, per phase and backend."""
    print(f"\nwall time by phase (s), total {total:.1f} s")
    for (phase, backend), seconds in sorted(phases.items(), key=lambda item: -item[1]):
        print(f"  {phase:12s} {backend:9s} {seconds:8.1f}")


def _builder(bench: str, kind: str):
    module, name = E2E_MODELS[bench][kind].split(":")
    return getattr(importlib.import_module(module), name)


def train_step_call(kind: str, patch_nums, batch: int, depth: int, dtype, backend: str, device, **overrides):
    """call(i): one training step of ``kind`` ("var" or "hmar") with random weights and inputs: autocast forward
    (``dtype``; None for fp32), cross-entropy over all L positions, backward, fused AdamW step."""
    model = _builder("train", kind)(depth, patch_nums, device=device, **overrides).train()
    cfg, gen = model.cfg, torch.Generator(device).manual_seed(0)
    length = sum(p * p for p in patch_nums)
    x_BLCv = torch.randn(batch, length - patch_nums[0] ** 2, cfg.latent_channels, device=device, generator=gen)
    label_B = torch.randint(0, cfg.num_classes, (batch,), device=device, generator=gen)
    target_BL = torch.randint(0, cfg.vocab_size, (batch, length), device=device, generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=torch.device(device).type == "cuda")
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)

    def call(i):
        with autocast:
            logits_BLV = model(label_B, x_BLCv, backend=backend)
        loss = torch.nn.functional.cross_entropy(logits_BLV.flatten(0, 1).float(), target_BL.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return call


def sample_call(kind: str, patch_nums, batch: int, depth: int, dtype, device, vqvae=None, **overrides):
    """call(i): class-conditional sampling of ``batch`` images with ``kind`` ("var": KV cache; "hmar": the
    composite model with its default refinement schedule), random weights, VQVAE decoding included."""
    from hmar_model import build_vqvae, sample

    model = _builder("infer", kind)(depth, patch_nums, device=device, **overrides).eval()
    vqvae = vqvae if vqvae is not None else build_vqvae(patch_nums, device=device)
    return lambda i: sample(model, vqvae, num_images=batch, seed=i, dtype=dtype)


# ---------------------------------------------------------------------------------------------- CPU sweep
def cpu_sweep(args) -> int:
    """Correctness of the backends against the float64 reference on small schedules (no timing). Exit code."""
    device = torch.device("cpu")
    dtypes = args.dtypes or CPU_DTYPES
    backends = args.backends or CPU_BACKENDS
    failed = ran = 0
    print(f"{'schedule':24s} {'pattern':15s} {'dtype':5s} {'D':>3s} {'backend':8s}  error/bound (out dq dk dv)")
    skipped = set()
    for patch_nums in CPU_SCHEDULES:
        for pattern in args.patterns:
            for dtype in dtypes:
                for head_dim in args.cpu_head_dims:
                    for backend in backends:
                        case = bm.AttentionCase(patch_nums, pattern, backend, dtype, 2, 3, head_dim)
                        why = case.unavailable(device)
                        if why:
                            if (backend, why) not in skipped:
                                skipped.add((backend, why))
                                print(f"skip {backend}: {why}")
                            continue
                        ratios = bm.check_case(case, device)
                        ok = ratios["worst"] <= 1
                        ran += 1
                        failed += not ok
                        print(f"{str(patch_nums):24s} {pattern:15s} {dtype:5s} {head_dim:3d} {backend:8s}  "
                              + " ".join(f"{ratios[n]:5.2f}" for n in ("out", "dq", "dk", "dv"))
                              + ("  ok" if ok else "  FAIL"), flush=True)
    if not ran:
        print("CPU correctness sweep: no case ran (every backend was skipped, reasons above): nothing was checked")
        return 1
    verdict = f"all passed ({ran} cases)" if not failed else f"{failed} of {ran} case(s) FAILED"
    print(f"CPU correctness sweep: {verdict} "
          "(error/bound ≤ 1 passes; bound = 2 × error of the reference in the same dtype + 2 × rounding)")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------- CLI
# Flags of the timed GPU sweep, refused by the CPU correctness sweep, and the other way round.
GPU_ONLY_FLAGS = ("--px", "--head-dims", "--batch", "--heads", "--reps", "--warmup", "--quick", "--results",
                  "--time-budget", "--fresh", "--no-plots", "--no-graph", "--e2e", "--e2e-only", "--e2e-configs",
                  "--e2e-no-sampling")
CPU_ONLY_FLAGS = ("--cpu-head-dims",)


def parse_args(argv=None, on_gpu: bool | None = None):
    """The flags. With ``on_gpu`` given (main: whether CUDA is available), a flag of the other mode (timed GPU
    sweep or CPU correctness sweep) is an error (exit code 2), never silently ignored."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    misplaced = [] if on_gpu is None else [flag for flag in (CPU_ONLY_FLAGS if on_gpu else GPU_ONLY_FLAGS)
                                           if any(token == flag or token.startswith(flag + "=") for token in given)]
    if misplaced:
        parser.error(f"{', '.join(misplaced)} only appl{'ies' if len(misplaced) == 1 else 'y'} to the "
                     + ("CPU correctness sweep (no CUDA device)" if on_gpu else
                        "timed GPU sweep; there is no CUDA device here, so hmar-bench runs the CPU correctness "
                        "sweep (flags: --patterns --backends --dtypes --cpu-head-dims)"))
    if args.reps is None:
        args.reps = 5 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmar-bench", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--px", type=int, nargs="+", default=sorted(bm.SCHEDULES), choices=sorted(bm.SCHEDULES),
                        help="schedules by resolution (default: all)")
    parser.add_argument("--patterns", nargs="+", default=list(bm.PATTERNS), choices=bm.PATTERNS,
                        help="scale-level masks (default: both)")
    parser.add_argument("--backends", nargs="+", default=None, choices=bm.SWEEP_BACKENDS,
                        help="ours (cuda, triton), the anchors (sdpa, flex, varlen) and the dense FlashAttention "
                             "rate (dense_fa); default: all on a GPU (unavailable ones are skipped with the "
                             "reason), cuda triton varlen in the CPU sweep")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(bm.DTYPES),
                        help="default: bf16 fp16 on a GPU, fp32 fp16 in the CPU sweep")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128],
                        help="head dims D of the GPU sweep (default: 64 128)")
    parser.add_argument("--batch", type=int, default=4, help="batch size B (default 4)")
    parser.add_argument("--heads", type=int, default=16, help="heads H (default 16)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (default 20; "
                                                                 "5 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and no Triton autotuning (default configs): for a fast look")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="root folder: writes <results>/<gpu>/attention.csv and plots (default: results)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds after which no new case starts (e.g. 480 under a 10-minute command limit); "
                             "rows are written after every input shape, so a cut-short run keeps them")
    parser.add_argument("--fresh", action="store_true",
                        help="overwrite attention.csv instead of replacing only the rows measured now")
    parser.add_argument("--no-plots", action="store_true", help="write the CSV only")
    parser.add_argument("--no-graph", dest="graph", action="store_false",
                        help="skip the CUDA-graph column (*_graph_*: fwd and fwd+bwd captured once and replayed), "
                             "which adds two captures and their timed replays per case; its cells stay empty")
    parser.add_argument("--e2e", action="store_true",
                        help="also time a VAR / HMAR train step and sampling run per schedule (random weights) "
                             "into <results>/<gpu>/e2e.csv")
    parser.add_argument("--e2e-only", action="store_true", help="run the e2e benches without the attention sweep")
    parser.add_argument("--e2e-configs", nargs="+", default=list(e2e.TRAIN_CONFIGS), choices=list(e2e.TRAIN_CONFIGS),
                        help="training configs of the e2e rows (default: all; d16-256 is B=32 at 256 px)")
    parser.add_argument("--e2e-no-sampling", action="store_true", help="e2e: training rows only")
    parser.add_argument("--cpu-head-dims", type=int, nargs="+", default=[32],
                        help="head dims of the CPU correctness sweep")
    return parser


def _restart_with_interpreter(argv):
    """Run hmar-bench again in a process with TRITON_INTERPRET=1.

    Triton reads the variable when it is first imported, and importing hmar_model (which imports hmar_kernels,
    which imports triton through torch._dynamo) happens before main() runs, so setting it here is too late.
    """
    os.environ["TRITON_INTERPRET"] = "1"
    argv = sys.argv[1:] if argv is None else list(argv)
    os.execv(sys.executable, [sys.executable, "-m", "hmar_bench.cli", *argv])


def main(argv=None):
    args = parse_args(argv, on_gpu=torch.cuda.is_available())
    if not torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("hmar-bench: no CUDA device here, so nothing is timed; running the CPU correctness sweep "
                  "(reference vs the Triton interpreter) instead", flush=True)
            _restart_with_interpreter(argv)
        sys.exit(cpu_sweep(args))
    device = torch.device("cuda", torch.cuda.current_device())
    sys.exit(run(args, device, torch.cuda.get_device_name(device)))


def run(args, device: torch.device, name: str) -> int:
    """The timed sweep on ``device`` (called ``name``), then e2e benches and plots. Returns the exit code."""
    import triton

    from hmar_kernels.options import kernel_options

    t0 = time.perf_counter()
    args.dtypes = args.dtypes or ["bf16", "fp16"]
    args.backends = args.backends or list(bm.SWEEP_BACKENDS)
    out_dir = args.results / gpu_slug(name)
    meta = dict(device=name, torch=torch.__version__, triton=triton.__version__,
                date=datetime.date.today().isoformat(), commit=git_commit())
    print(f"hmar-bench on {name} (torch {meta['torch']}, triton {meta['triton']}, commit {meta['commit']}): "
          f"px {args.px}, {args.patterns}, {args.dtypes}, D {args.head_dims}, B={args.batch} H={args.heads}, "
          f"{args.reps} reps{' (quick: no autotuning)' if args.quick else ''}"
          f"{'' if args.graph else ', no CUDA-graph column'} → {out_dir}", flush=True)
    rows, phases, failures = [], defaultdict(float), []
    csv_path = out_dir / "attention.csv"
    if not args.e2e_only:
        if args.fresh and csv_path.exists():
            csv_path.unlink()
        with kernel_options(autotune=not args.quick):
            rows, phases, failures = run_sweep(args, device, meta, lambda group: write_rows(csv_path, group))
        print(f"wrote {csv_path} ({len(rows)} rows measured now, merged with the rows already there)")
        print_table(rows)
    if args.e2e or args.e2e_only:
        start = time.perf_counter()
        if args.fresh and (out_dir / "e2e.csv").exists():
            (out_dir / "e2e.csv").unlink()
        if e2e.measure(out_dir, args.e2e_configs, sampling=not args.e2e_no_sampling):
            failures.append("e2e (see the FAILED lines above)")
        phases["e2e", ""] += time.perf_counter() - start
    if not args.no_plots and csv_path.exists():
        from . import plot

        start = time.perf_counter()
        for path in plot.plot_gpu(csv_path):
            print(f"wrote {path}")
        phases["plots", ""] += time.perf_counter() - start
    print_phases(phases, time.perf_counter() - t0)
    if failures:
        print(f"\n{len(failures)} case(s) failed:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    main()
