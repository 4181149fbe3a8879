"""Timing of hmar-eval on one GPU: sample-set generation (HMAR d16/d30, 256 px) and metrics on 50,000 images.

    python bench/eval_gpu.py --out $OUT/eval.csv --inception /path/to/default_1.pt     # H200: ≈ 5 min
    python bench/eval_gpu.py --smoke --out /tmp/eval.csv                               # tiny, CPU: checks the script

generate rows: ``generate_samples`` end to end (sampling with CUDA graphs, VQVAE decode, uint8 conversion, shard
files, the final .npz) on random-weight models with each depth's official evaluation settings (d16: cfg 1.7,
top-k 1000, top-p 0.99; d30: cfg 1.6, top-k 650, top-p 0.99; default refinement schedule). A full 50k run does not
fit the device budget: --images (default 2,000) are generated after a warm-up run (eager pass + graph capture) and
the 50k wall time is extrapolated linearly ("est_50k_s", note "extrapolated").

metrics rows: Inception features of --feature-images (default 50,000) random uint8 256 px images fed from host
memory (disk reads excluded), the FID matrix square root (scipy, CPU) and precision/recall (k = 3) of 50,000
samples against a 10,000-image reference on the GPU. With no Inception file (--inception or $HMAR_INCEPTION) the
same architecture runs with random weights: rows say "random-weights (timing only)".
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
MISSING = [m for m in ("scipy", "tqdm", "triton") if importlib.util.find_spec(m) is None]
if MISSING:
    sys.exit(f"eval_gpu.py: missing packages {MISSING}: pip install {' '.join(MISSING)}")

from hmar_model import PATCH_NUMS, build_hmar, build_vqvae  # noqa: E402
from hmar_model.eval.features import extract_features  # noqa: E402
from hmar_model.eval.generate import generate_samples  # noqa: E402
from hmar_model.eval.inception import load_inception, random_inception  # noqa: E402
from hmar_model.fast_sampling import fast_sampler  # noqa: E402
from hmar_model.eval.metrics import feature_statistics, frechet_distance, precision_recall  # noqa: E402
from hmar_model.tiny import tiny_transformer, tiny_vqvae  # noqa: E402

COLUMNS = ("device", "torch", "triton", "date", "commit", "task", "model", "px", "dtype", "batch", "images",
           "seconds", "images_per_s", "est_50k_s", "note")
EVAL_SETTINGS = {16: dict(cfg=1.7, top_k=1000, top_p=0.99), 30: dict(cfg=1.6, top_k=650, top_p=0.99)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FULL_SET = 50_000


def commit() -> str:
    if os.environ.get("HMAR_GIT_COMMIT"):
        return os.environ["HMAR_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class Csv:
    """Rows appended to the CSV as they are measured (a run cut short keeps what it measured)."""

    def __init__(self, path: str, device: torch.device):
        import triton
        self.path = path
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.meta = dict(device=name, torch=torch.__version__, triton=triton.__version__,
                         date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), commit=commit())
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)

    def add(self, **row):
        row = {**self.meta, **row}
        for key in ("seconds", "images_per_s", "est_50k_s"):
            if isinstance(row.get(key), float):
                row[key] = f"{row[key]:.2f}"
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in COLUMNS])
        print("  ".join(f"{c}={row.get(c, '')}" for c in COLUMNS[5:]), flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generate(model, vqvae, *, classes: int, per_class: int, batch: int, dtype, settings, device, folder,
                  progress: bool) -> float:
    """Seconds of one generate_samples run of classes × per_class images (warm-up run before it)."""
    kwargs = dict(per_class=per_class, batch_size=batch, dtype=dtype, progress=progress, **settings)
    generate_samples(model, vqvae, os.path.join(folder, "warmup.npz"), classes=list(range(min(classes, 3))),
                     **{**kwargs, "per_class": batch})  # eager pass, CUDA-graph capture, first replay
    sync(device)
    start = time.perf_counter()
    generate_samples(model, vqvae, os.path.join(folder, "timed.npz"), classes=list(range(classes)), **kwargs)
    sync(device)
    return time.perf_counter() - start


def bench_generate(args, table: Csv, device):
    per_class = 50 if not args.smoke else 2
    classes = max(1, args.images // per_class)
    for depth in args.depths:
        if args.smoke:
            model, vqvae, px = tiny_transformer("hmar", device=device).eval(), tiny_vqvae(device=device).eval(), 16
        else:
            model = build_hmar(depth, PATCH_NUMS[256], device=device).eval()
            vqvae, px = build_vqvae(PATCH_NUMS[256], device=device).eval(), 256
        settings = EVAL_SETTINGS.get(depth, EVAL_SETTINGS[16]) if not args.smoke else dict(cfg=1.5, top_k=10,
                                                                                            top_p=0.9)
        for dtype in args.dtypes:
            # as hmar-eval generate: the compiled pair on CUDA, made once (one compilation for all rows of this
            # dtype; ascending batches, so that each batch size gets its decoder graph instead of a padded one)
            fast_model, fast_vqvae = fast_sampler(model, vqvae, compile=False if args.no_compile else None,
                                                  dtype=DTYPES[dtype])
            sampler = "compiled" if fast_model is not model else "eager"
            for batch in sorted(args.batches):
                with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
                    try:
                        seconds = time_generate(fast_model, fast_vqvae, classes=classes, per_class=per_class,
                                                batch=batch,
                                                dtype=DTYPES[dtype], settings=settings, device=device,
                                                folder=folder, progress=args.progress)
                    except torch.OutOfMemoryError:
                        table.add(task="generate", model=f"hmar-d{depth}", px=px, dtype=dtype, batch=batch,
                                  note="OOM")
                        torch.cuda.empty_cache()
                        continue
                images = classes * per_class
                table.add(task="generate", model=f"hmar-d{depth}", px=px, dtype=dtype, batch=batch, images=images,
                          seconds=seconds, images_per_s=images / seconds, est_50k_s=FULL_SET * seconds / images,
                          note=f"{sampler} sampler; extrapolated from {images} images (first compilation not "
                               f"included); random weights; {settings}")
        del model, vqvae
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_metrics(args, table: Csv, device):
    if args.inception and os.path.isfile(args.inception):
        net, weights = load_inception(args.inception, device=device), os.path.basename(args.inception)
    else:
        net, weights = random_inception(device=device), "random-weights (timing only)"
    px, n = (256, args.feature_images) if not args.smoke else (32, 8)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(min(n, 2000), px, px, 3), dtype=np.uint8)  # host memory, re-used

    def batches(total):
        """``total`` images in batches cut from the pool (full batches wrap around to its start)."""
        for i in range(0, total, args.feature_batch):
            size = min(args.feature_batch, total - i, len(pool))
            start = i % len(pool) if i % len(pool) + size <= len(pool) else 0
            yield pool[start:start + size]

    extract_features(batches(min(n, 2 * args.feature_batch)), net, progress=False)  # warm-up (cuDNN plans)
    sync(device)
    start = time.perf_counter()
    feats = extract_features(batches(n), net, total=n, progress=args.progress)
    seconds = time.perf_counter() - start
    table.add(task="features", model=weights, px=px, dtype="fp32", batch=args.feature_batch, images=n,
              seconds=seconds, images_per_s=n / seconds, est_50k_s=FULL_SET * seconds / n,
              note="uint8 from host memory (no disk reads); pool + spatial features")

    start = time.perf_counter()
    stats = feature_statistics(feats.pool)
    frechet_distance(*stats, *feature_statistics(feats.pool[::-1][: max(2, n // 5)]))
    table.add(task="fid_stats_sqrtm", model="scipy", dtype="fp64", images=n, seconds=time.perf_counter() - start,
              note="means, covariances and scipy.linalg.sqrtm of 2048×2048 on the CPU")

    ref = feats.pool[: max(4, n // 5)] + rng.normal(scale=0.1, size=(max(4, n // 5), feats.pool.shape[1]))
    sync(device)
    start = time.perf_counter()
    precision_recall(ref, feats.pool, device=device)
    sync(device)
    table.add(task="precision_recall", model=f"k=3 vs {len(ref)} reference", dtype="fp32", images=n,
              seconds=time.perf_counter() - start, note="k-NN radii of both sets + both coverages")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="CSV path, e.g. $OUT/eval.csv")
    parser.add_argument("--inception", default=os.environ.get("HMAR_INCEPTION"),
                        help="Inception FID weights (default $HMAR_INCEPTION; absent: random weights, timing only)")
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 30])
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--batches", type=int, nargs="+", default=[50, 250],
                        help="images per sampling call (50: the official one batch per class; 250: hmar-eval's "
                             "default)")
    parser.add_argument("--no-compile", action="store_true", help="the eager sampler (hmar-eval's --no-compile)")
    parser.add_argument("--images", type=int, default=2000, help="images generated per timed row (50 per class)")
    parser.add_argument("--feature-images", type=int, default=FULL_SET)
    parser.add_argument("--feature-batch", type=int, default=500)
    parser.add_argument("--skip", nargs="*", choices=("generate", "metrics"), default=[])
    parser.add_argument("--tmp", default=None, help="folder for the temporary sample sets (default: system tmp)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--smoke", action="store_true", help="tiny models and few images on the CPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.depths, args.dtypes, args.batches, args.images = [3], ["fp32"], [3], 6
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("eval_gpu.py: no CUDA device (use --smoke on a CPU)", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the official sampler
    table = Csv(args.out, device)
    if "generate" not in args.skip:
        bench_generate(args, table, device)
    if "metrics" not in args.skip:
        bench_metrics(args, table, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
