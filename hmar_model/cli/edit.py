"""hmar-edit: zero-shot inpainting, outpainting and class-conditional region editing with HMAR.

    hmar-edit --model hmar-d16 --image dog.png --mask mask.png --class 207 --num-images 4 \
        --out edited.png                                   # white mask pixels are regenerated
    hmar-edit --model hmar-d16 --image dog.png --box 64,64,128,128 --out outpainted.png   # image shrunk into the box
    hmar-edit --demo --out demo-edit.png                   # random-weight model, made-up image, centre square

The PNG shows the input (resized to the model's resolution, or the outpainting canvas) followed by the results.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..edit import inpaint, outpaint_canvas
from .common import (DTYPES, add_model_arguments, check_input_image, check_model_arguments, demo_note, int_list,
                     load_image, load_models, prepare_run, run_command, save_grid)

PROG = "hmar-edit"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add_model_arguments(parser)
    e = parser.add_argument_group("editing")
    e.add_argument("--image", default=None,
                   help="input image (any size; resized to the model's resolution); with --demo, optional")
    where = e.add_mutually_exclusive_group()
    where.add_argument("--mask", help="mask image: white (≥ 128) = regenerate")
    where.add_argument("--box", type=int_list, help="outpainting: top,left,height,width of the image in the canvas")
    e.add_argument("--class", dest="label", type=int, default=None,
                   help="class of the regenerated content (default: unconditional)")
    e.add_argument("--num-images", type=int, default=4, help="variations (consecutive samples of one batch)")
    e.add_argument("--refine-steps", type=int, default=4, help="masked-prediction passes per scale")
    e.add_argument("--coverage", type=float, default=0.5,
                   help="regenerate a token when at least this fraction of its cell is masked")
    return parser


def demo_image(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A colour-gradient image (1, 3, side, side) and a centre-square mask (1, 1, side, side)."""
    ramp = torch.linspace(0, 1, side)
    image = torch.stack((ramp.view(1, -1).expand(side, side), ramp.view(-1, 1).expand(side, side),
                         torch.full((side, side), 0.5)))[None]
    mask = torch.zeros(1, 1, side, side)
    mask[..., side // 4:side - side // 4, side // 4:side - side // 4] = 1
    return image, mask


def run(args) -> int:
    device = prepare_run(args)
    for flag, path in (("--image", args.image), ("--mask", args.mask)):
        if path is not None:
            check_input_image(path, flag)
    model, vqvae = load_models(args, device, PROG, roles=("hmar",))
    side = vqvae.cfg.downsample * model.patch_nums[-1]
    if args.image is None:  # --demo
        image, mask = demo_image(side)
    else:
        image = load_image(args.image, side)
    if args.box is not None:
        image, mask = outpaint_canvas(image, side, args.box)
    elif args.mask is not None:
        mask = (load_image(args.mask, side, mode="L") >= 0.5).float()
    n = args.num_images
    out = inpaint(model, vqvae, image.expand(n, -1, -1, -1), mask, args.label, cfg=args.cfg, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed, refine_steps=args.refine_steps, coverage=args.coverage,
                  refine_guidance=args.refine_guidance, dtype=DTYPES[args.dtype], progress=not args.no_progress)
    save_grid(torch.cat((image.to(out.device), out)), args.out, nrow=n + 1)
    print(f"{PROG}: wrote the input and {n} edits to {args.out}{demo_note(args)}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()

    def body(args):
        check_model_arguments(parser, args)
        if args.image is None and not args.demo:
            parser.error("give --image (and --mask or --box), or --demo")
        if args.image is not None and args.mask is None and args.box is None:
            parser.error("give --mask (inpainting) or --box (outpainting)")
        if args.num_images < 1:
            parser.error(f"--num-images must be ≥ 1, got {args.num_images}")
        if args.kind not in (None, "hmar"):
            parser.error(f"--kind {args.kind}: editing needs the composite HMAR model (or --model NSP with --mp)")
        return run(args)
    return run_command(PROG, parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
