"""The fast sampler's defaults on one GPU in about 150 s: hmar-eval generate (HMAR d16, 256 px) and the 32-image row.

    python bench/fast_sampler_gpu.py --out $OUT              # H200: ≈ 2–2.5 min, compilation included
    python bench/fast_sampler_gpu.py --smoke --out /tmp/fs   # tiny models on the CPU: checks the script
    python bench/fast_sampler_gpu.py --full --out $OUT       # one cold 50,000-image run, timed end to end

Random weights, bf16, TF32 on, the depth's evaluation settings (d16: cfg 1.7, top-k 1000, top-p 0.99; d30: cfg 1.6,
top-k 650, top-p 0.99; default refinement). ``--depth 30`` times HMAR-d30 instead.

1. generate (``eval.csv`` rows, bench/eval_gpu.py's columns): ``generate_samples`` with the command's defaults
   (``fast_sampler``'s compiled pair, made once as ``hmar-eval generate`` does; batch ``DEFAULT_BATCH_SIZE``).
   A first run of 3 batches pays the compilation, the eager warm-up and the CUDA-graph capture ("first run" row,
   whose note gives the torch.compile seconds and frames: the compiled block's two and the decoder's one);
   then --images images are timed. ``est_50k_s`` = the first run's extra time (its seconds minus its images at the
   steady rate: compilation, warm-up, capture) + 50,000 images at the steady rate: a whole 50k run on one GPU.
2. ``sample`` rows (``e2e.csv``, hmar_bench.e2e's columns): 32 images through the same compiled passes with a
   new ``CompiledDecoding`` (one more decoder compilation, for batch 32), the row of issue 14's sampling target
   (mode "sample captured-loop compiled-passes+compiled-decoder"); and ``sample`` alone at the generate batch
   (no uint8 conversion, copies or files), so that generate's host share shows.
3. ``--sweep B1 B2 ...`` (optional, ascending, ≈ 20 s of decoder compilation each): ``sample`` alone at each batch
   size with the generate settings, to check which batch is fastest (images_per_s of the e2e.csv rows).
Rows are written as measured: a run cut short keeps them.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()  # --full times the whole process, imports included

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hmar_bench import e2e  # noqa: E402
import eval_gpu  # noqa: E402
from hmar_model import PATCH_NUMS, build_hmar, build_vqvae  # noqa: E402
from hmar_model.eval.generate import DEFAULT_BATCH_SIZE, generate_samples  # noqa: E402
from hmar_model.fast_sampling import fast_sampler  # noqa: E402
from hmar_model.sampling import release_graphs  # noqa: E402
from hmar_model.tiny import tiny_transformer, tiny_vqvae  # noqa: E402
from hmar_model.vqvae import CompiledDecoding  # noqa: E402

PER_CLASS = 50


def timed_generate(model, vqvae, folder: str, name: str, classes: int, batch: int, settings: dict, device,
                   progress: bool) -> float:
    out = os.path.join(folder, f"{name}.npz")
    eval_gpu.sync(device)
    start = time.perf_counter()
    generate_samples(model, vqvae, out, classes=list(range(classes)), per_class=PER_CLASS, batch_size=batch,
                     dtype=torch.bfloat16, progress=progress, **settings)
    eval_gpu.sync(device)
    seconds = time.perf_counter() - start
    os.remove(out)
    return seconds


def compile_seconds() -> str:
    """Time spent in torch.compile so far (Dynamo's per-frame totals: tracing, Inductor, kernel compilation)."""
    import torch._dynamo.utils

    frames = torch._dynamo.utils.compilation_time_metrics.get("_compile.compile_inner", [])
    return f"torch.compile {sum(frames):.1f} s over {len(frames)} frames"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for eval.csv and e2e.csv")
    parser.add_argument("--images", type=int, default=2000, help="timed generate images (multiple of 50)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH_SIZE, help="generate batch size")
    parser.add_argument("--no-compile", action="store_true", help="the eager sampler (for comparison rows)")
    parser.add_argument("--skip-sample-rows", action="store_true", help="only the generate rows")
    parser.add_argument("--full", action="store_true",
                        help="one cold run of 50,000 images instead (1,000 classes × 50), timed from the process's "
                             "start to the final .npz; nothing else")
    parser.add_argument("--sweep", type=int, nargs="*", default=[],
                        help="also time sample() alone at these batch sizes (generate settings)")
    parser.add_argument("--depth", type=int, choices=sorted(eval_gpu.EVAL_SETTINGS), default=16,
                        help="HMAR depth (random weights)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--smoke", action="store_true", help="tiny models and few images on the CPU")
    args = parser.parse_args(argv)
    if args.smoke:
        device, per_batch = torch.device("cpu"), 2
        model, vqvae, px, name = tiny_transformer("hmar").eval(), tiny_vqvae().eval(), 16, "tiny-hmar"
        settings = dict(cfg=1.5, top_k=10, top_p=0.9)
        args.images, args.batch, args.skip_sample_rows = 2 * PER_CLASS, PER_CLASS, True
    elif not torch.cuda.is_available():
        print("fast_sampler_gpu.py: no CUDA device (use --smoke on a CPU)", file=sys.stderr)
        return 2
    else:
        device, per_batch = torch.device("cuda"), 3
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as hmar-eval generate
        model = build_hmar(args.depth, PATCH_NUMS[256], device=device).eval()
        vqvae, px, name = build_vqvae(PATCH_NUMS[256], device=device).eval(), 256, f"hmar-d{args.depth}"
        settings = eval_gpu.EVAL_SETTINGS[args.depth]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = eval_gpu.Csv(str(out / "eval.csv"), device)
    compile = False if args.no_compile else None
    fast_model, fast_vqvae = fast_sampler(model, vqvae, compile=compile, dtype=torch.bfloat16)
    mode = "compiled" if fast_model is not model else "eager"
    row = dict(task="generate", model=name, px=px, dtype="bf16", batch=args.batch)

    if args.full:
        classes = 1000 if not args.smoke else 3
        with tempfile.TemporaryDirectory() as folder:
            timed_generate(fast_model, fast_vqvae, folder, "full", classes, args.batch, settings, device,
                           args.progress)
        seconds = time.perf_counter() - STARTED
        images = classes * PER_CLASS
        table.add(**row, images=images, seconds=seconds, images_per_s=images / seconds,
                  note=f"{mode} sampler; one cold run, process start to the final .npz (imports, model build, "
                       f"{compile_seconds()}, warm-up, capture, every batch, shards, npz); random weights; "
                       f"{settings}")
        return 0
    first_images = per_batch * args.batch
    with tempfile.TemporaryDirectory() as folder:
        first = timed_generate(fast_model, fast_vqvae, folder, "first", first_images // PER_CLASS, args.batch,
                               settings, device, args.progress)
        table.add(**row, images=first_images, seconds=first, images_per_s=first_images / first,
                  note=f"{mode} sampler; first run: compilation ({compile_seconds()}) + eager warm-up + "
                       f"CUDA-graph capture + replay")
        images = args.images // PER_CLASS * PER_CLASS
        seconds = timed_generate(fast_model, fast_vqvae, folder, "timed", images // PER_CLASS, args.batch, settings,
                                 device, args.progress)
    rate = images / seconds
    overhead = max(0.0, first - first_images / rate)
    table.add(**row, images=images, seconds=seconds, images_per_s=rate,
              est_50k_s=overhead + eval_gpu.FULL_SET / rate,
              note=f"{mode} sampler; est_50k_s = {overhead:.1f} s first-run overhead + 50,000 images at the "
                   f"steady rate (target ≤ 300 s); random weights; {settings}")
    if args.skip_sample_rows:
        return 0

    meta = e2e.run_meta()
    rows = e2e.read_rows(out / "e2e.csv")
    decoder = "compiled-passes+compiled-decoder" if mode == "compiled" else "eager-decoder"
    sweep_decoding = CompiledDecoding(vqvae)  # ascending sizes: each compiles its own graph, none is padded
    runs = [(e2e.SAMPLE_IMAGES, CompiledDecoding(vqvae), 10, {}), (args.batch, fast_vqvae, 3, settings)]
    runs += [(batch, sweep_decoding, 3, settings) for batch in sorted(set(args.sweep) - {args.batch})]
    for batch, decoding, reps, extra in runs:
        release_graphs()
        label = decoder if not extra else f"{decoder} generate-settings"
        sample_row = e2e.timed_sample_row("hmar", fast_model, decoding if mode == "compiled" else vqvae,
                                               label, batch=batch, reps=reps, **extra)
        rows = e2e.merge_row(rows, {**sample_row, **meta})
        e2e.write_rows(out / "e2e.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
