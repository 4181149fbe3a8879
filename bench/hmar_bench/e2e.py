"""End-to-end speed on one GPU: training steps and sampling, eager baselines against the compiled + fused path.

    hmar-bench --e2e-only --e2e-configs d16-256      # rows → results/<gpu>/e2e.csv (the sweep first with --e2e)
    python -m hmar_bench.e2e --out $OUT               # the same rows → $OUT/e2e.csv; ≈ 7 min on an H200
    python -m hmar_bench.e2e --out $OUT --configs d16-256 --profile

Training rows (bf16 autocast, fused AdamW, cross-entropy over all L tokens with VAR's 1/L weights), per config
d16 256 px B=32, d16 512 px B=16, d16 1024 px B=8, d30 256 px B=16:

    model  mode             attention backend
    var    eager            sdpa (boolean mask: what VAR users run)
    var    eager            auto (our kernels)
    hmar   eager            auto (HMAR next-scale model, block-diagonal)
    hmar   compiled+fused   auto (hmar_model.fast_step.TrainStep: one Inductor graph, q/k-norm kernel, fused head+CE)
    hmar   compiled+fused+cuda_graph   auto (the same step replayed as one CUDA graph: TrainStep's default)

Sampling rows: 32 images, d16, 256 px, bf16, decode included: VAR (KV cache) and HMAR with its default
refinement schedule, both with the captured loop (the sampler's default on CUDA), with the eager decoder
("eager-decoder") and with ``CompiledDecoding`` ("compiled-decoder"); HMAR also with its per-scale passes compiled
(``sampling.CompiledInference``, "compiled-passes+decoder").

A row that fails prints its error and the run goes on (exit code 1 at the end).

Columns: model, depth, px, batch, mode, backend, ms (median of CUDA-event timings after warm-up), tokens_per_s,
images_per_s, model_tflops (6 × per-token matmul parameters × tokens + 3.5 × the attention's forward FLOPs over
allowed pairs; sampling rows: 0), mfu (model FLOPs per second over the bf16 matmul rate measured by a large
torch.matmul in the same run), peak_mem_mb (peak allocation of one step above what was allocated before, measured
on the second call: before any capture, so a graphed row reports what its graph's memory pool has to hold).
Rows go to <out>/e2e.csv, rewritten atomically after every row (a cut-short run keeps what it measured); rows of an
earlier run in the same file stay unless re-measured (same model, depth, px, batch, mode, backend), so the configs
can be split over several commands.
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import time
from pathlib import Path

import torch

from hmar_bench import harness
from hmar_bench.harness import git_commit
from hmar_kernels import tiles
from hmar_kernels.tiles import PATCH_NUMS

COLUMNS = ("model", "depth", "px", "batch", "mode", "backend", "ms", "tokens_per_s", "images_per_s", "model_tflops",
           "mfu", "peak_mem_mb", "device", "torch", "triton", "commit")
SCHEDULES = PATCH_NUMS  # the official token-map sides per resolution
TRAIN_CONFIGS = {"d16-256": (16, 256, 32), "d16-512": (16, 512, 16), "d16-1024": (16, 1024, 8),
                 "d30-256": (30, 256, 16)}  # name → (depth, px, batch)
TRAIN_ROWS = (("var", "eager", "sdpa"), ("var", "eager", "auto"), ("hmar", "eager", "auto"),
              ("hmar", "compiled+fused", "auto"), ("hmar", "compiled+fused+cuda_graph", "auto"))
ROW_KEY = ("model", "depth", "px", "batch", "mode", "backend")
SAMPLE_IMAGES, SAMPLE_DEPTH, SAMPLE_PX = 32, 16, 256


# ---- FLOPs ----
def allowed_pairs(patch_nums, pattern: str) -> int:
    """(query, key) pairs the mask allows (the kernels' tile metadata counts them: hmar_kernels.tiles)."""
    return tiles.allowed_pairs(tuple(patch_nums), tiles.named_pattern_bits(pattern, len(patch_nums)))


def train_step_tflops(depth: int, patch_nums, batch: int, pattern: str, vocab: int = 4096, latent: int = 32) -> float:
    """Model FLOPs of one training step (forward + backward), in TFLOP."""
    width, tokens = 64 * depth, batch * sum(p * p for p in patch_nums)
    per_token_params = depth * 12 * width * width + width * vocab + latent * width  # qkv, proj, fc1, fc2; head; embed
    attention_fwd = 4 * batch * width * allowed_pairs(patch_nums, pattern) * depth  # 4·B·H·D·pairs per layer
    return (6 * per_token_params * tokens + 3.5 * attention_fwd) / 1e12


# ---- timing (the benchmark harness's CUDA-event timer and peak-memory probe) ----
def time_ms(call, warmup: int, reps: int) -> float:
    """Median of ``reps`` CUDA-event timings of ``call()`` after at least ``warmup`` calls."""
    return harness.time_cuda(lambda i: call(), warmup=warmup, reps=reps).median_ms


peak_mem_mb = harness.peak_memory_mb


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    """The bf16 matmul rate of this GPU, TFLOP/s (the denominator of mfu)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = time_ms(lambda: a @ b, warmup=5, reps=reps)
    return 2 * n ** 3 / ms / 1e9


# ---- rows ----
def train_row(model_kind, mode, backend, depth, px, batch, rate, profile_dir=None) -> dict:
    from hmar_model.fast_step import TrainStep
    from hmar_model.hmar import build_hmar_nsp
    from hmar_model.var import build_var

    patch_nums = SCHEDULES[px]
    build = build_var if model_kind == "var" else build_hmar_nsp
    model = build(depth, patch_nums, device="cuda").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    fast = mode.startswith("compiled+fused")
    step = TrainStep(model, optimizer, dtype=torch.bfloat16, compile=fast, fused=fast, backend=backend,
                     cuda_graph=mode.endswith("cuda_graph"))
    g = torch.Generator("cuda").manual_seed(0)
    L = sum(p * p for p in patch_nums)
    label_B = torch.randint(0, 1000, (batch,), device="cuda", generator=g)
    x_BLCv = torch.randn(batch, L - 1, 32, device="cuda", generator=g)
    target_BL = torch.randint(0, 4096, (batch, L), device="cuda", generator=g)
    call = lambda: step(label_B, x_BLCv, target_BL)  # noqa: E731
    compile_start = time.perf_counter()
    call()  # compilation (compiled rows) / first-call setup
    torch.cuda.synchronize()
    setup_s = time.perf_counter() - compile_start
    peak = peak_mem_mb(call)  # second call: a graphed step is still eager (warm-up) here
    ms = time_ms(call, warmup=3, reps=10)  # a graphed step captures in this warm-up; timed calls are replays
    if profile_dir is not None:
        write_profile(call, profile_dir / f"profile_{model_kind}_d{depth}_{px}_{mode.replace('+', '_')}.txt")
    tflops = train_step_tflops(depth, patch_nums, batch, model.pattern)
    print(f"train {model_kind} d{depth} {px}px B={batch} {mode:15s} {backend:5s} {ms:8.2f} ms  "
          f"mfu {tflops / ms * 1e3 / rate:5.1%}  peak {peak:8.0f} MB  (first call {setup_s:.0f} s)", flush=True)
    return dict(model=model_kind, depth=depth, px=px, batch=batch, mode=mode, backend=backend, ms=round(ms, 3),
                tokens_per_s=round(batch * L / ms * 1e3), images_per_s=round(batch / ms * 1e3, 2),
                model_tflops=round(tflops, 3), mfu=round(tflops / ms * 1e3 / rate, 4), peak_mem_mb=round(peak))


def sample_row(model_kind, decoder, decoding, compiled_passes=False) -> dict:
    """``decoding``: the VQVAE, or its ``CompiledDecoding`` (one instance for all rows: one compilation)."""
    import hmar_model as hm
    from hmar_model.sampling import CompiledInference

    build = hm.build_var if model_kind == "var" else hm.build_hmar
    model = build(SAMPLE_DEPTH, SCHEDULES[SAMPLE_PX], device="cuda").eval()
    model = CompiledInference(model) if compiled_passes else model
    decoder = f"compiled-passes+{decoder}" if compiled_passes else decoder
    return timed_sample_row(model_kind, model, decoding, decoder)


def timed_sample_row(model_kind, model, decoding, decoder: str, batch: int = SAMPLE_IMAGES, reps: int = 10,
                     **settings) -> dict:
    """The e2e.csv row of ``sample(model, decoding, num_images=batch, dtype=bf16, **settings)`` with the captured
    loop (a built model, possibly wrapped); ``decoder`` names the decoding path in the row's mode."""
    import hmar_model as hm

    patch_nums, depth = model.patch_nums, model.cfg.depth
    seeds = iter(range(10 ** 6))
    call = lambda: hm.sample(model, decoding, num_images=batch, seed=next(seeds),  # noqa: E731
                             dtype=torch.bfloat16, **settings)
    for _ in range(2):  # eager warm-up, then the capture (and the decoder's compilation)
        call()
    ms = time_ms(call, warmup=2, reps=reps)
    peak = peak_mem_mb(call)
    hm.sampling.release_graphs(model)
    px = patch_nums[-1] * decoding.cfg.downsample
    print(f"sample {model_kind} d{depth} {px}px {batch} images {decoder:16s} {ms:8.2f} ms  "
          f"{batch / ms * 1e3:7.1f} images/s", flush=True)
    L = sum(p * p for p in patch_nums)
    return dict(model=model_kind, depth=depth, px=px, batch=batch, mode=f"sample captured-loop {decoder}",
                backend="auto", ms=round(ms, 3), tokens_per_s=round(batch * L / ms * 1e3),
                images_per_s=round(batch / ms * 1e3, 2), model_tflops=0.0, mfu=0.0, peak_mem_mb=round(peak))


def write_profile(call, path: Path):
    """GPU kernels of three steps by total CUDA time (where the remaining time goes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            call()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    write_atomic(path, table + "\n")


# ---- output ----
def write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if list(row) == list(COLUMNS)]


def merge_row(rows: list[dict], row: dict) -> list[dict]:
    """``rows`` with ``row`` replacing the one of the same key (compared as text, as read back from the CSV)."""
    key = tuple(str(row[k]) for k in ROW_KEY)
    return [r for r in rows if tuple(str(r[k]) for k in ROW_KEY) != key] + [row]


def write_rows(path: Path, rows: list[dict]):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def run_meta() -> dict:
    import triton

    commit = git_commit()
    return dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                commit=commit)


def free_memory():
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def measure(out: Path, configs, train: bool = True, sampling: bool = True, profile: bool = False) -> int:
    """The rows of ``configs`` (and the sampling rows) into <out>/e2e.csv; exit code 1 when a row failed."""
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta()
    rate = matmul_tflops()
    print(f"{meta['device']}: bf16 matmul {rate:.0f} TFLOP/s (torch {meta['torch']}, triton {meta['triton']}, "
          f"commit {meta['commit']})", flush=True)
    rows, measured, failed = read_rows(out / "e2e.csv"), 0, []

    def add(label, make_row):
        nonlocal rows, measured
        try:
            row = make_row()
        except torch.cuda.OutOfMemoryError:
            print(f"{label}: out of memory, row skipped", flush=True)
            return
        except Exception as error:  # a benchmark goes on: report the failed row, measure the others
            print(f"{label}: FAILED with {type(error).__name__}: {error}", flush=True)
            failed.append(label)
            return
        rows, measured = merge_row(rows, {**row, **meta}), measured + 1
        write_rows(out / "e2e.csv", rows)

    for name in configs if train else []:
        depth, px, batch = TRAIN_CONFIGS[name]
        for model_kind, mode, backend in TRAIN_ROWS:
            profile_dir = out if profile and name == "d16-256" and model_kind == "hmar" else None
            add(f"train {model_kind} d{depth} {px}px B={batch} {mode} {backend}",
                lambda: train_row(model_kind, mode, backend, depth, px, batch, rate, profile_dir))
            free_memory()
    if sampling:
        from hmar_model.vqvae import CompiledDecoding, build_vqvae

        vqvae = build_vqvae(SCHEDULES[SAMPLE_PX], device="cuda")
        decodings = {"eager-decoder": vqvae, "compiled-decoder": CompiledDecoding(vqvae)}
        runs = [(kind, decoder, False) for kind in ("var", "hmar") for decoder in decodings]
        for model_kind, decoder, compiled_passes in runs + [("hmar", "compiled-decoder", True)]:
            add(f"sample {model_kind} {decoder} compiled passes {compiled_passes}",
                lambda: sample_row(model_kind, decoder, decodings[decoder], compiled_passes))
            gc.collect()
            torch.cuda.empty_cache()
    print(f"measured {measured} rows; {out / 'e2e.csv'} holds {len(rows)}; failed: {failed or 'none'}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder of e2e.csv (default: $OUT or .)")
    parser.add_argument("--configs", nargs="+", default=list(TRAIN_CONFIGS), choices=list(TRAIN_CONFIGS),
                        help="training configs (default: all four)")
    parser.add_argument("--no-train", action="store_true", help="skip the training rows")
    parser.add_argument("--no-sampling", action="store_true", help="skip the sampling rows")
    parser.add_argument("--profile", action="store_true",
                        help="also write profile_*.txt (kernels by CUDA time) for the d16 256 px HMAR rows")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("hmar_bench.e2e needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    return measure(Path(args.out), args.configs, not args.no_train, not args.no_sampling, args.profile)


if __name__ == "__main__":
    sys.exit(main())
