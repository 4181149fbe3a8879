"""hmar-sample: class-conditional images from local VAR / HMAR checkpoints into one PNG grid.

    hmar-sample --vae vae_ch160v4096z32.pth --model hmar-d16.pth --classes 207 360 388 --num-images 4 \
        --cfg 1.7 --top-k 1000 --top-p 0.99 --seed 0 --out grid.png

One row per class, ``--num-images`` columns. Same arguments, same PNG.
"""
from __future__ import annotations

import argparse
import sys


from ..sampling import sample
from .common import DTYPES, add_model_arguments, load_models, parse_mask_schedule, save_grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmar-sample", description=__doc__.split("\n\n")[0])
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_images < 1:
        raise SystemExit("hmar-sample: --num-images must be ≥ 1")
    model, vqvae = load_models(args)
    if args.classes is None:
        labels, num = None, args.rows * args.num_images
    else:
        labels = [c for c in args.classes for _ in range(args.num_images)]
        num = len(labels)
    images = sample(model, vqvae, labels, num_images=num, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed, mask_schedule=parse_mask_schedule(args.mask_schedule),
                    refine_guidance=args.refine_guidance, more_smooth=args.more_smooth, dtype=DTYPES[args.dtype],
                    decode_chunk=args.decode_chunk)
    save_grid(images, args.out, nrow=args.num_images)
    print(f"hmar-sample: wrote {num} images ({tuple(images.shape[-2:])}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
