"""hmar-edit: zero-shot inpainting, outpainting and class-conditional region editing with HMAR.

    hmar-edit --vae vae_ch160v4096z32.pth --model hmar-d16.pth --image dog.png --mask mask.png --class 207 \
        --num-images 4 --out edited.png                      # white mask pixels are regenerated
    hmar-edit ... --image dog.png --box 64,64,128,128 --out outpainted.png   # image shrunk into the box

The PNG shows the input (resized to the model's resolution, or the outpainting canvas) followed by the results.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..edit import inpaint, outpaint_canvas
from .common import DTYPES, add_model_arguments, load_image, load_models, save_grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmar-edit", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    e = parser.add_argument_group("editing")
    e.add_argument("--image", required=True, help="input image (any size; resized to the model's resolution)")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="mask image: white (≥ 128) = regenerate")
    where.add_argument("--box", type=lambda s: tuple(int(x) for x in s.split(",")),
                       help="outpainting: top,left,height,width of the image inside the canvas")
    e.add_argument("--class", dest="label", type=int, default=None,
                   help="class of the regenerated content (default: unconditional)")
    e.add_argument("--num-images", type=int, default=4, help="variations (consecutive samples of one batch)")
    e.add_argument("--refine-steps", type=int, default=4, help="masked-prediction passes per scale")
    e.add_argument("--coverage", type=float, default=0.5,
                   help="regenerate a token when at least this fraction of its cell is masked")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    model, vqvae = load_models(args)
    side = vqvae.cfg.downsample * model.patch_nums[-1]
    if args.box is not None:
        image, mask = outpaint_canvas(load_image(args.image, side), side, args.box)
    else:
        image = load_image(args.image, side)
        mask = (load_image(args.mask, side, mode="L") >= 0.5).float()
    n = args.num_images
    out = inpaint(model, vqvae, image.expand(n, -1, -1, -1), mask, args.label, cfg=args.cfg, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed, refine_steps=args.refine_steps, coverage=args.coverage,
                  refine_guidance=args.refine_guidance, dtype=DTYPES[args.dtype])
    save_grid(torch.cat((image.to(out.device), out)), args.out, nrow=n + 1)
    print(f"hmar-edit: wrote the input and {n} edits to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
