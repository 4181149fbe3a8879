"""GPU measurements of hmar-train (one device): trainer throughput next to the e2e bench's bare step, d30 under
FSDP2 at world size 1, and a short real-data run (tokenise images → train tiny → hmar-sample).

    python bench/train_gpu.py --out $OUT            # all parts, ~8 min on one H200
    python bench/train_gpu.py --out $OUT --parts throughput

Writes $OUT/train.csv (one row per measured configuration), $OUT/runs/*/log.jsonl, $OUT/sample.png and
$OUT/train_gpu.log. Trainer numbers are the median over the logged windows after the first (warm-up, autotuning);
``e2e_step_ms`` is hmar-bench's train step (same model, batch, bf16, backend auto: forward, plain cross-entropy,
backward, fused AdamW), and ``overhead_pct`` = trainer / e2e − 1 (target ≤ 3 %).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import triton

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hmar_bench.harness import time_cuda  # noqa: E402
from hmar_bench.cli import git_commit, train_step_call  # noqa: E402
from hmar_model.schedules import PATCH_NUMS  # noqa: E402

COLUMNS = ["model", "px", "batch", "mode", "world_size", "precision", "step_ms", "tokens_per_s", "images_per_s",
           "peak_mem_gb", "data_ms", "e2e_step_ms", "overhead_pct", "first_loss", "last_loss", "steps", "device",
           "torch", "triton", "git_commit"]


def log(out: str, text: str):
    print(text, flush=True)
    with open(os.path.join(out, "train_gpu.log"), "a") as f:
        f.write(text + "\n")


def hmar_train(out: str, name: str, *overrides: str, timeout: int = 420) -> list[dict]:
    run = os.path.join(out, "runs", name)
    cmd = [sys.executable, "-m", "hmar_model.cli.train", *overrides, f"out={run}"]
    log(out, "$ " + " ".join(cmd))
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    log(out, result.stdout[-3000:] + result.stderr[-3000:])
    if result.returncode != 0:
        raise RuntimeError(f"{name}: hmar-train exited with {result.returncode}")
    with open(os.path.join(run, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def row(model: str, px: int, batch: int, mode: str, precision: str, records: list[dict], e2e_ms=None) -> dict:
    timed = records[1:] or records  # the first window holds compilation / autotuning
    step_ms = statistics.median(r["step_ms"] for r in timed)
    return {"model": model, "px": px, "batch": batch, "mode": mode, "world_size": 1, "precision": precision,
            "step_ms": round(step_ms, 3), "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in timed)),
            "images_per_s": round(statistics.median(r["images_per_s"] for r in timed), 2),
            "peak_mem_gb": round(max(r["peak_mem_gb"] for r in records), 3),
            "data_ms": round(statistics.median(r["data_ms"] for r in timed), 3),
            "e2e_step_ms": None if e2e_ms is None else round(e2e_ms, 3),
            "overhead_pct": None if e2e_ms is None else round(100 * (step_ms / e2e_ms - 1), 2),
            "first_loss": round(records[0]["loss"], 4), "last_loss": round(records[-1]["loss"], 4),
            "steps": records[-1]["step"], "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "git_commit": git_commit()}


def e2e_step_ms(px: int, batch: int) -> float:
    call = train_step_call("hmar", PATCH_NUMS[px], batch, 16, torch.bfloat16, "auto", torch.device("cuda"))
    ms = time_cuda(call, warmup=5, reps=20).median_ms
    del call
    torch.cuda.empty_cache()
    return ms


def throughput(out: str) -> list[dict]:
    rows = []
    for px, batch in ((256, 32), (512, 16)):
        records = hmar_train(out, f"d16_{px}", "--config", "d16", "data=synthetic", "synthetic_samples=4096",
                             f"batch={batch}", "max_steps=120", "log_every=20", "ckpt_every=100000",
                             "save_at_end=false", "vae=random", f"patch_nums=[{','.join(map(str, PATCH_NUMS[px]))}]")
        rows.append(row("hmar-d16", px, batch, "ddp", "bf16", records, e2e_step_ms(px, batch)))
        log(out, json.dumps(rows[-1]))
    return rows


def fsdp_d30(out: str) -> list[dict]:
    records = hmar_train(out, "d30_fsdp", "--config", "d30", "data=synthetic", "synthetic_samples=1024", "batch=16",
                         "max_steps=30", "log_every=5", "ckpt_every=100000", "save_at_end=false", "vae=random",
                         "distributed=fsdp")
    result = row("hmar-d30", 256, 16, "fsdp", "bf16", records)
    log(out, json.dumps(result))
    return [result]


def make_images(folder: str, count: int):
    """``count`` images in 4 classes: crops of scikit-image's sample photos when it is installed, else
    procedural ones (discs, stripes, checkerboards, gradients) with random colours."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    try:
        from skimage import data as skdata
        photos = [getattr(skdata, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
        photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    except ImportError:
        photos = None
    for c in range(4):
        os.makedirs(os.path.join(folder, f"class{c}"), exist_ok=True)
        for i in range(count // 4):
            if photos is not None:
                p = photos[c]
                side = int(rng.integers(min(p.shape[:2]) // 3, min(p.shape[:2])))
                y, x = int(rng.integers(0, p.shape[0] - side + 1)), int(rng.integers(0, p.shape[1] - side + 1))
                img = Image.fromarray(np.ascontiguousarray(p[y:y + side, x:x + side])).resize((48, 48))
            else:
                img = Image.new("RGB", (48, 48), tuple(int(v) for v in rng.integers(0, 256, 3)))
                draw, colour = ImageDraw.Draw(img), tuple(int(v) for v in rng.integers(0, 256, 3))
                r = int(rng.integers(6, 20))
                if c == 0:
                    draw.ellipse((24 - r, 24 - r, 24 + r, 24 + r), fill=colour)
                elif c == 1:
                    for k in range(0, 48, 2 * (r // 3 + 1)):
                        draw.rectangle((k, 0, k + r // 3, 47), fill=colour)
                elif c == 2:
                    for k in range(0, 48, 8):
                        for m in range(k % 16, 48, 16):
                            draw.rectangle((m, k, m + 7, k + 7), fill=colour)
                else:
                    ramp = np.linspace(0, 1, 48)[None, :, None] * np.asarray(colour)[None, None]
                    img = Image.fromarray(np.repeat(ramp, 48, 0).astype(np.uint8))
            img.save(os.path.join(folder, f"class{c}", f"{i:04d}.png"))


def real_data(out: str) -> list[dict]:
    images, shards = os.path.join(out, "images"), os.path.join(out, "shards_tiny")
    make_images(images, 320)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tok = [sys.executable, "-m", "hmar_model.cli.tokenize", "--data", images, "--vae", "tiny", "--patch-nums",
           "1,2,3,4", "--views", "4", "--flip", "--out", shards]
    log(out, "$ " + " ".join(tok))
    result = subprocess.run(tok, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    log(out, result.stdout[-2000:] + result.stderr[-2000:])
    start = time.time()
    records = hmar_train(out, "tiny_real", "--config", "tiny", "data=shards", f"data_path={shards}",
                         "max_steps=3000", "batch=64", "log_every=100", "ckpt_every=1000", "threads=0")
    log(out, f"tiny real-data run: {time.time() - start:.0f} s, loss {records[0]['loss']:.3f} → "
             f"{records[-1]['loss']:.3f}")
    export = os.path.join(out, "runs", "tiny_real", "export")
    sample = [sys.executable, "-m", "hmar_model.cli.sample", "--vae", os.path.join(export, "vae.pth"),
              "--model", os.path.join(export, "model.pth"), "--classes", "0", "1", "2", "3", "--num-images", "8",
              "--top-k", "16", "--out", os.path.join(out, "sample.png")]
    log(out, "$ " + " ".join(sample))
    result = subprocess.run(sample, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    log(out, result.stdout[-2000:] + result.stderr[-2000:])
    if result.returncode != 0:
        raise RuntimeError("hmar-sample failed on the exported checkpoint")
    return [row("hmar-tiny", 16, 64, "real-data", "fp32", records)]


PARTS = {"throughput": throughput, "fsdp": fsdp_d30, "real": real_data}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "train_out"))
    parser.add_argument("--parts", nargs="+", choices=tuple(PARTS), default=list(PARTS))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not torch.cuda.is_available():
        raise SystemExit("bench/train_gpu.py needs a CUDA device")
    path = os.path.join(args.out, "train.csv")
    for part in args.parts:
        try:
            rows = PARTS[part](args.out)
        except Exception as error:  # noqa: BLE001 - report and go on with the next part
            log(args.out, f"part {part} failed: {type(error).__name__}: {error}")
            continue
        new = not os.path.isfile(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
    log(args.out, open(path).read() if os.path.isfile(path) else "no rows")


if __name__ == "__main__":
    main()
