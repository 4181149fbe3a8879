"""hmar-sample: class-conditional images from VAR / HMAR models into one image grid.

    hmar-sample --model hmar-d16 --classes 207 360 388 --num-images 4 --cfg 1.7 --top-k 1000 --top-p 0.99 \
        --seed 0 --out grid.png                  # official weights by name (--vae defaults to vqvae)
    hmar-sample --demo --out demo.png            # random-weight models: the pipeline in seconds, no download

One row per class, ``--num-images`` columns. Same arguments, same PNG. On CUDA the sampler runs compiled (the first
call compiles, ≈ 1 min); --no-compile runs the eager reference path.
"""
from __future__ import annotations

import argparse
import sys

from ..fast_sampling import fast_sampler, is_compiled
from ..sampling import sample
from .common import (DTYPES, add_compile_argument, add_model_arguments, announce_compile, check_model_arguments,
                     demo_note, load_models, parse_mask_schedule, prepare_run, run_command, save_grid)

PROG = "hmar-sample"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add_model_arguments(parser)
    s = parser.add_argument_group("sampling")
    s.add_argument("--classes", type=int, nargs="+", default=None,
                   help="ImageNet classes, one grid row each (1000 = unconditional); default: random classes")
    s.add_argument("--num-images", type=int, default=4, help="images per class (random classes: rows of this many)")
    s.add_argument("--rows", type=int, default=1, help="rows of random-class images when --classes is omitted")
    s.add_argument("--mask-schedule", default=None,
                   help="HMAR refinement: 'default' (official for the resolution), 'none', or JSON [[1],[1,3],...]")
    s.add_argument("--more-smooth", action="store_true", help="Gumbel-smoothed code maps (visualisation)")
    s.add_argument("--decode-chunk", type=int, default=None, help="decode this many images at a time")
    add_compile_argument(s)
    return parser


def run(args) -> int:
    device = prepare_run(args)
    mask_schedule = parse_mask_schedule(args.mask_schedule)
    model, vqvae = fast_sampler(*load_models(args, device, PROG), compile=False if args.no_compile else None,
                                dtype=DTYPES[args.dtype])
    announce_compile(PROG, is_compiled(model, vqvae))
    if args.classes is None:
        labels, num = None, args.rows * args.num_images
    else:
        labels = [c for c in args.classes for _ in range(args.num_images)]
        num = len(labels)
    images = sample(model, vqvae, labels, num_images=num, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed, mask_schedule=mask_schedule, refine_guidance=args.refine_guidance,
                    more_smooth=args.more_smooth, dtype=DTYPES[args.dtype], decode_chunk=args.decode_chunk,
                    progress=not args.no_progress)
    save_grid(images, args.out, nrow=args.num_images)
    print(f"{PROG}: wrote {num} images ({tuple(images.shape[-2:])}) to {args.out}{demo_note(args)}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()

    def body(args):
        check_model_arguments(parser, args)
        for flag, value in (("--num-images", args.num_images), ("--rows", args.rows)):
            if value < 1:
                parser.error(f"{flag} must be ≥ 1, got {value}")
        if args.decode_chunk is not None and args.decode_chunk < 1:
            parser.error(f"--decode-chunk must be ≥ 1, got {args.decode_chunk}")
        return run(args)
    return run_command(PROG, parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
