"""hmar-tokenize: encode an ImageNet-style folder (<class>/<image>) into multi-scale token shards for hmar-train.

    hmar-tokenize --data imagenet/train --vae vae_ch160v4096z32.pth --resolution 256 --out shards256
    hmar-tokenize --data my_images --vae tiny --patch-nums 1,2,3,4 --out shards_tiny     # CPU test setup

Rerunning the same command resumes after the last finished shard.
"""
from __future__ import annotations

import argparse
import sys

from ..schedules import PATCH_NUMS
from .common import int_list, resolve_device, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmar-tokenize", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", required=True, help="folder of class sub-folders of images")
    parser.add_argument("--out", required=True, help="output shard folder")
    parser.add_argument("--vae", required=True, help="VQVAE checkpoint, or 'random' / 'tiny' (seeded weights)")
    parser.add_argument("--vae-seed", type=int, default=0, help="weights of a 'random' / 'tiny' VQVAE")
    parser.add_argument("--resolution", type=int, choices=sorted(PATCH_NUMS), default=256,
                        help="official schedule of this resolution (ignored with --patch-nums)")
    parser.add_argument("--patch-nums", type=int_list, default=None, help="comma-separated schedule, e.g. 1,2,3,4")
    parser.add_argument("--views", type=int, default=1, help="encodings per image: centre crop, then random crops")
    parser.add_argument("--flip", action="store_true", help="also encode the mirrored crops")
    parser.add_argument("--batch", type=int, default=64, help="images per encoder call")
    parser.add_argument("--shard-size", type=int, default=50_000, help="images per shard")
    parser.add_argument("--seed", type=int, default=0, help="random crops")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def main(argv=None) -> int:
    return run_command("hmar-tokenize", build_parser(), tokenize, argv,
                       memory_hint="encode fewer images at a time (--batch)")


def tokenize(args) -> int:
    from ..train.tokenize import tokenize_folder

    patch_nums = args.patch_nums or PATCH_NUMS[args.resolution]
    device = resolve_device(args.device)
    tokenize_folder(args.data, args.out, args.vae, patch_nums, vae_seed=args.vae_seed, views=args.views,
                    flip=args.flip, batch=args.batch, shard_size=args.shard_size, seed=args.seed, device=device)
    return 0

if __name__ == "__main__":
    sys.exit(main())
