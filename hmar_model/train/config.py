"""Training configuration: a typed schema, YAML recipes (``recipes/*.yaml``) and ``key=value`` overrides.

    cfg = load_config("tiny", ["data=synthetic", "max_steps=40", "out=runs/tiny"])
    cfg.model.depth, cfg.batch, cfg.lr_peak()

Recipes follow the official runs (spec §4.7): d16/d20 tblr 1e-4, d24/d30 8e-5, final-lr fraction ``wpe`` and AdaLN
gamma init by depth, d30 decays the weight decay to 0.08. Every key has a comment below; an unknown key is an
error that lists the valid ones (OmegaConf structured configs check names and types).
"""
from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmar_kernels.tiles import validate_patch_nums

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
STAGES = ("next-scale", "masked")
MODEL_KINDS = ("hmar", "var")
DATA_SOURCES = ("shards", "synthetic")
PRECISIONS = ("bf16", "fp16", "fp32")
LOSS_WEIGHTS = ("lognorm", "uniform", "equal")
SCHEDULES = ("lin0", "lin00", "cos")
DISTRIBUTED = ("ddp", "fsdp")


class ConfigError(ValueError):
    """A user mistake in a recipe or override (the CLI prints it without a traceback)."""


@dataclass
class ModelSchema:
    kind: str = "hmar"  # "hmar" (block-diagonal next-scale / masked models) or "var" (block-causal, comparison runs)
    depth: int = 16  # transformer blocks; official width 64·depth, heads = depth
    width: Optional[int] = None  # C; None = 64·depth
    num_heads: Optional[int] = None  # None = depth
    num_classes: int = 1000  # class table has one more row (the null class)
    vocab_size: int = 4096  # codebook size V of the VQVAE
    latent_channels: int = 32  # Cvae
    cond_drop_rate: float = 0.1  # label dropout (classifier-free guidance), applied by the model in train()
    drop_path_rate: Optional[float] = None  # stochastic depth at the last block; None = 0.1·depth/24
    n_layers_train: int = 8  # masked stage: the last blocks that are finetuned
    adaln_gamma: Optional[float] = None  # AdaLN gamma-row init; None = by depth (1e-3 / 1e-4 / 1e-5)


@dataclass
class TrainSchema:
    out: Optional[str] = None  # run folder (config.yaml, log.jsonl, ckpt/, export/)
    model: ModelSchema = field(default_factory=ModelSchema)
    stage: str = "next-scale"  # "next-scale" pre-training or "masked" finetuning (HMAR only)
    init: Optional[str] = None  # masked stage: next-scale run folder, exported .pth, or an official hmar/NSP file
    patch_nums: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16])  # token-map sides
    vae: str = "random"  # VQVAE: a checkpoint path, "random" (official shape, seeded weights) or "tiny"
    vae_seed: int = 0  # weights of a "random"/"tiny" VQVAE
    data: str = "shards"  # "shards" (hmar-tokenize output) or "synthetic" (random tokens)
    data_path: Optional[str] = None  # shard folder for data=shards
    synthetic_samples: int = 1024  # dataset size for data=synthetic
    batch: int = 768  # global batch per optimiser step (all ranks, all accumulation steps)
    accum: int = 1  # gradient-accumulation micro-steps per optimiser step
    max_steps: int = 1000  # optimiser steps of the run (the LR/WD schedule spans them)
    tblr: float = 1e-4  # base LR; peak LR = tblr · batch / 256 unless lr is set
    lr: Optional[float] = None  # peak LR overriding tblr
    warmup: float = 0.02  # warm-up fraction of max_steps (official: ep/50 epochs)
    wp0: float = 0.005  # LR factor at step 0 of the warm-up
    wpe: float = 0.1  # final LR factor
    sched: str = "lin0"  # "lin0" (official: flat 5%, then linear to wpe), "lin00" (linear) or "cos"
    twd: float = 0.05  # weight decay at the start
    twde: Optional[float] = None  # weight decay at the end (cosine); None = twd
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW
    clip: float = 2.0  # gradient-norm clipping (0 = off)
    precision: str = "bf16"  # autocast dtype: "bf16", "fp16" (with a GradScaler) or "fp32"
    loss_weights: str = "lognorm"  # next-scale loss per scale: "lognorm" (HMAR), "uniform" (VAR) or "equal"
    ema: float = 0.0  # EMA decay of the weights (0 = off), exported next to the raw weights
    seed: int = 42  # RNG seed; rank r uses seed·world + r, as upstream
    distributed: str = "ddp"  # "ddp" or "fsdp" (FSDP2 fully_shard per block; for d24/d30)
    compile: bool = False  # torch.compile the micro-batch's forward + loss
    cuda_graph: Optional[bool] = None  # replay each optimiser step as one CUDA graph; None = on for CUDA when it can
    fused: Optional[bool] = None  # fused q/k-norm kernels + chunked head/CE (no (B, L, V) logits); None = on CUDA
    attn_backend: str = "auto"  # hmar_kernels.attention backend
    tf32: bool = True  # TF32 matmuls on CUDA (upstream default)
    threads: int = 0  # CPU threads per process (torch.set_num_threads); 0 = torch's default
    log_every: int = 10  # steps between log.jsonl lines (each one syncs the host)
    ckpt_every: int = 1000  # steps between checkpoints (plus one at the end and on SIGTERM/SIGINT)
    keep_last: int = 3  # checkpoints kept on disk
    save_at_end: bool = True  # final checkpoint + export/ (benchmarks turn it off)
    tensorboard: bool = False  # also write TensorBoard scalars to out/tb


# Keys that may differ when resuming (they do not change the trajectory beyond rounding, or extend it: max_steps;
# distributed: DCP re-shards the checkpoint for DDP or FSDP).
RESUMABLE_OVERRIDES = ("max_steps", "threads", "log_every", "ckpt_every", "keep_last", "tensorboard", "compile",
                       "cuda_graph", "fused", "attn_backend", "out", "data_path", "save_at_end", "distributed")


def recipe_names() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(RECIPE_DIR) if f.endswith(".yaml"))


def valid_keys(schema=TrainSchema, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            keys += valid_keys(type(default), prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _check_keys(mapping: dict, where: str, prefix: str = ""):
    allowed = set(valid_keys())
    for key, value in mapping.items():
        name = prefix + str(key)
        if isinstance(value, dict) and name == "model":
            _check_keys(value, where, "model.")
        elif name not in allowed:
            raise ConfigError(f"unknown config key {name!r} in {where}; valid keys: {', '.join(valid_keys())}")


def _recipe_path(name: str) -> str:
    if name.endswith((".yaml", ".yml")):
        if not os.path.isfile(name):
            raise ConfigError(f"recipe file not found: {name!r}")
        return name
    path = os.path.join(RECIPE_DIR, name + ".yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown recipe {name!r}; built-in recipes: {', '.join(recipe_names())} "
                          "(or pass a .yaml path)")
    return path


def parse_overrides(overrides: list[str]) -> dict:
    """['a=1', 'model.depth=4'] → nested dict; ConfigError for a malformed item or an unknown key."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value (e.g. max_steps=80)")
    try:
        dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot parse overrides {overrides}: {error}") from None
    _check_keys(dotlist, "the command line")
    return dotlist


def merge(base: DictConfig, *layers: dict, where: str = "config") -> DictConfig:
    """Typed merge; a wrong type or value is a ConfigError naming the key."""
    try:
        cfg = OmegaConf.merge(base, *layers)
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid {where}: {error.msg if hasattr(error, 'msg') else error}") from None
    validate(cfg)
    return cfg


def load_config(recipe: str, overrides: list[str] = ()) -> DictConfig:
    """Schema defaults ← recipe YAML ← overrides, validated."""
    path = _recipe_path(recipe)
    try:
        layer = OmegaConf.to_container(OmegaConf.load(path))
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot read recipe {path}: {error}") from None
    _check_keys(layer or {}, path)
    return merge(OmegaConf.structured(TrainSchema), layer or {}, parse_overrides(list(overrides)),
                 where=f"recipe {recipe!r} with overrides")


def from_yaml_text(text: str) -> DictConfig:
    """A run's saved config.yaml (written by ``to_yaml``)."""
    return merge(OmegaConf.structured(TrainSchema), OmegaConf.to_container(OmegaConf.create(text)),
                 where="saved run config")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def differences(a: DictConfig, b: DictConfig, ignore=()) -> list[str]:
    """'key: a → b' for every leaf that differs (dotted keys), skipping ``ignore``."""
    flat_a, flat_b = _flatten(OmegaConf.to_container(a)), _flatten(OmegaConf.to_container(b))
    return [f"{k}: {flat_a.get(k)!r} → {flat_b.get(k)!r}" for k in sorted(set(flat_a) | set(flat_b))
            if k not in ignore and flat_a.get(k) != flat_b.get(k)]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _choice(cfg, key: str, allowed):
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def validate(cfg: DictConfig):
    for key, allowed in (("stage", STAGES), ("model.kind", MODEL_KINDS), ("data", DATA_SOURCES),
                         ("precision", PRECISIONS), ("loss_weights", LOSS_WEIGHTS), ("sched", SCHEDULES),
                         ("distributed", DISTRIBUTED)):
        _choice(cfg, key, allowed)
    for key in ("batch", "accum", "max_steps", "log_every", "ckpt_every", "keep_last", "synthetic_samples"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be ≥ 1, got {cfg[key]}")
    if not 0 <= cfg.warmup < 1 or not 0 <= cfg.ema < 1 or cfg.clip < 0:
        raise ConfigError(f"need 0 ≤ warmup < 1, 0 ≤ ema < 1 and clip ≥ 0; got warmup={cfg.warmup}, "
                          f"ema={cfg.ema}, clip={cfg.clip}")
    try:
        validate_patch_nums(list(cfg.patch_nums))
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    if cfg.stage == "masked" and cfg.model.kind != "hmar":
        raise ConfigError("stage=masked finetunes HMAR's masked-prediction model; model.kind must be 'hmar'")
    if cfg.stage == "masked" and not 0 < cfg.model.n_layers_train <= cfg.model.depth:
        raise ConfigError(f"model.n_layers_train must be in [1, model.depth = {cfg.model.depth}], "
                          f"got {cfg.model.n_layers_train}")
    if cfg.batch % cfg.accum:
        raise ConfigError(f"batch {cfg.batch} is not divisible by accum {cfg.accum}")


def lr_peak(cfg) -> float:
    """Peak LR: ``lr`` or the official tblr · global batch / 256."""
    return cfg.lr if cfg.lr is not None else cfg.tblr * cfg.batch / 256


def seq_len(cfg) -> int:
    return sum(p * p for p in cfg.patch_nums)


__all__ = ["ConfigError", "TrainSchema", "ModelSchema", "load_config", "parse_overrides", "merge", "to_yaml",
           "from_yaml_text", "differences", "lr_peak", "recipe_names", "valid_keys", "RESUMABLE_OVERRIDES"]
