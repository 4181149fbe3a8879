"""hmar-train: next-scale pre-training and masked finetuning of HMAR (and VAR), single process or torchrun.

    hmar-train --config tiny data=synthetic max_steps=40 out=runs/tiny        # CPU smoke run, < 1 min
    hmar-train --resume runs/tiny                                             # continue after SIGTERM / a crash
    hmar-train --resume runs/tiny max_steps=80                                # extend a finished run
    hmar-train --config tiny --model var data=synthetic out=runs/tiny-var     # VAR (block-causal) for comparison
    torchrun --nproc_per_node=8 -m hmar_model.cli.train --config d16 out=runs/d16 data_path=shards256

Overrides are key=value (dotted for model keys: model.depth=12); ``--list-keys`` prints every key.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..train.config import (RESUMABLE_OVERRIDES, ConfigError, differences, from_yaml_text, load_config, merge,
                            parse_overrides, valid_keys)
from .common import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmar-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", default=None, help="recipe name (tiny, d16, d20, d24, d30) or a .yaml file")
    parser.add_argument("--resume", default=None, metavar="RUN",
                        help="continue the run in folder RUN from its newest usable checkpoint")
    parser.add_argument("--model", choices=("hmar", "var"), default=None,
                        help="var: train VAR (block-causal, uniform loss weights) for comparison runs; same as "
                             "model.kind=var loss_weights=uniform (overrides given after it win)")
    parser.add_argument("--list-keys", action="store_true", help="print every config key and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def resolve_config(args):
    """The run's config: a recipe with overrides, or a saved run's config with the overrides a resume allows."""
    if args.model == "var":
        args.overrides = ["model.kind=var", "loss_weights=uniform", *args.overrides]
    elif args.model == "hmar":
        args.overrides = ["model.kind=hmar", *args.overrides]
    if args.resume is None:
        if args.config is None:
            raise ConfigError("give --config RECIPE (e.g. --config tiny) or --resume RUN")
        cfg = load_config(args.config, args.overrides)
        if not cfg.out:
            raise ConfigError("set the run folder: out=PATH")
        if os.path.isfile(os.path.join(cfg.out, "config.yaml")):
            raise ConfigError(f"{cfg.out} already holds a run; continue it with --resume {cfg.out} or pick "
                              "another out=")
        return cfg, False
    saved_file = os.path.join(args.resume, "config.yaml")
    if not os.path.isfile(saved_file):
        raise ConfigError(f"--resume {args.resume}: no run there (no config.yaml)")
    with open(saved_file) as f:
        saved = from_yaml_text(f.read())
    overrides = parse_overrides(args.overrides)
    cfg = merge(saved, overrides, {"out": args.resume}, where="overrides of the resumed run")
    if args.config is not None:  # the recipe given again must be the run's recipe
        recipe = merge(load_config(args.config), overrides, {"out": args.resume}, where="recipe")
        changed = differences(saved, recipe, ignore=RESUMABLE_OVERRIDES)
        if changed:
            raise ConfigError(f"--config {args.config} is not the recipe of run {args.resume}: "
                              + "; ".join(changed))
    changed = differences(saved, cfg, ignore=RESUMABLE_OVERRIDES)
    if changed:
        raise ConfigError(f"cannot change {'; '.join(changed)} when resuming (only {', '.join(RESUMABLE_OVERRIDES)}"
                          " may change); start a new run instead")
    return cfg, True


def main(argv=None) -> int:
    return run_command("hmar-train", build_parser(), run, argv,
                       memory_hint="lower batch= (raise accum= to keep the global batch) or use precision=bf16")


def run(args) -> int:
    if args.list_keys:
        print("\n".join(valid_keys()))
        return 0
    from ..train.loop import train

    cfg, resume = resolve_config(args)
    train(cfg, resume=resume)
    return 0

if __name__ == "__main__":
    sys.exit(main())
