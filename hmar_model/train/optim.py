"""AdamW with the official parameter groups and the official LR / weight-decay schedule (spec §4.3–4.4).

    optimizer = build_optimizer(model, cfg)
    lr, wd = schedule(cfg, step)          # factors applied to every group each step by set_lr_wd
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import lr_peak

# Parameters whose names contain one of these, 1-D parameters and biases get no weight decay (upstream's list).
NO_DECAY_NAMES = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
                  "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")


def decays(name: str, param: torch.Tensor) -> bool:
    return not (param.ndim <= 1 or name.endswith("bias") or any(key in name for key in NO_DECAY_NAMES))


def param_groups(model: nn.Module) -> list[dict]:
    """[{decay params, wd_scale 1}, {no-decay params, wd_scale 0}] over the trainable parameters."""
    groups = {True: [], False: []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[decays(name, p)].append(p)
    return [{"params": groups[True], "wd_scale": 1.0}, {"params": groups[False], "wd_scale": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    # fused kernel on CUDA (upstream), foreach for FSDP2's sharded DTensor parameters and on the CPU
    fused = next(model.parameters()).device.type == "cuda" and cfg.distributed != "fsdp"
    return torch.optim.AdamW(param_groups(model), lr=lr_peak(cfg), betas=tuple(cfg.betas), weight_decay=0.0,
                             fused=fused or None)


def lr_factor(cfg, step: int) -> float:
    """Warm-up from wp0 to 1 over round(warmup·max_steps) steps, then the ``sched`` decay to wpe."""
    max_it, wp_it = cfg.max_steps, round(cfg.warmup * cfg.max_steps)
    if step < wp_it:
        return cfg.wp0 + (1 - cfg.wp0) * step / wp_it
    passed = (step - wp_it) / max(1, max_it - 1 - wp_it)
    rest = 1 - passed
    if cfg.sched == "lin0":
        return 1.0 if passed < 0.05 else cfg.wpe + (1 - cfg.wpe) * rest / 0.95
    if cfg.sched == "lin00":
        return cfg.wpe + (1 - cfg.wpe) * rest
    return cfg.wpe + (1 - cfg.wpe) * (0.5 + 0.5 * math.cos(math.pi * passed))


def wd_value(cfg, step: int) -> float:
    """Cosine from twd to twde (constant when twde is unset)."""
    end = cfg.twd if cfg.twde is None else cfg.twde
    return end + (cfg.twd - end) * (0.5 + 0.5 * math.cos(math.pi * step / max(1, cfg.max_steps - 1)))


def set_lr_wd(optimizer: torch.optim.Optimizer, cfg, step: int) -> float:
    """Set every group's lr and weight decay for ``step``; returns the lr."""
    lr, wd = lr_peak(cfg) * lr_factor(cfg, step), wd_value(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd * group["wd_scale"]
    return lr
