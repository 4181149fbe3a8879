"""Checkpoint I/O: read official files, strict key/shape checks with readable errors, converters, export.

    vqvae = load_model("vqvae")                          # official name: the Hugging Face cache (hub.py)
    hmar = load_model("hmar-d16.pth")                     # local file: composite HMAR, config read off the tensors
    var = load_model("var_d16.pth")                       # VAR (block-causal mask buffer in the file)
    load_checkpoint(build_hmar(16), "hmar-d16.safetensors")   # or into a model you built

Key maps (spec §2.9–2.10), all explicit below:

* official VAR / NSP / MP / composite files carry ``attn_bias_for_masking`` (1, 1, L, L), a dense 0/−inf mask we
  never build: it is checked for shape and dropped (``official_state_dict`` regenerates it for export);
* ``quantize.ema_vocab_hit_SV`` of another scale count (10-scale file, 14-scale model) is replaced by ours;
* NSP → composite: ``head*`` → ``ns_head*``, ``word_embed.bias`` → ``word_embed_bias``, ``blocks.j`` →
  ``base_blocks.j`` (j < depth − n) or ``ns_blocks.(j − depth + n)``; MP → composite: ``head*`` → ``mask_head*``,
  ``blocks.j`` (j ≥ depth − n) → ``mask_blocks.(j − depth + n)``, ``mask_embed`` kept; the MP's frozen copies of
  the shared weights are compared with the NSP's and otherwise ignored.

Sources: official names ("hmar-d16", "var-d30", "vqvae": hub.py, from the Hugging Face cache), local paths
(.pth/.pt/.bin, .safetensors) or state_dicts. Every problem with a source raises ValueError naming it.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from typing import Mapping, Union

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from . import hub
from .hmar import HMAR, MaskedPrediction, NextScalePrediction
from .schedules import PATCH_NUMS
from .var import VAR, TransformerConfig
from .vqvae import VQVAE, VQVAEConfig

Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]
MASK_KEY = "attn_bias_for_masking"
_BLOCK = re.compile(r"^(blocks|base_blocks|ns_blocks|mask_blocks)\.(\d+)\.(.*)$")


# ---- reading and writing ----
def read_state_dict(source: Source) -> "OrderedDict[str, torch.Tensor]":
    """A state_dict from an official name ("hmar-d16", "vqvae", ...: hub.OFFICIAL, through the Hugging Face
    cache), a local .pth/.pt/.bin or .safetensors file, or a mapping (returned as a shallow copy).

    A file that cannot be read raises ValueError naming it and the problem; only tensors are unpickled
    (``weights_only``), so reading a file never runs code from it."""
    if isinstance(source, Mapping):
        sd, origin = source, "the state_dict"
    elif isinstance(source, (str, os.PathLike)):
        origin = os.fspath(hub.resolve(source))
        sd = _read_file(origin)
    else:
        raise TypeError(f"checkpoint must be a path, an official name or a state_dict, got {type(source).__name__}")
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        top = list(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
        raise ValueError(f"{origin}: not a flat state_dict of tensors (top-level entries: {top}); for a training "
                         "checkpoint pass e.g. ckpt['trainer']['transformer_wo_ddp']")
    return OrderedDict(sd)


def _read_file(path: str):
    if not os.path.exists(path):
        raise ValueError(f"checkpoint file not found: {path!r}{hub.unknown_source_hint(path)}")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: is a directory, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty (an interrupted download or copy?)")
    if path.endswith(".safetensors"):
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except safetensors.SafetensorError as error:
            raise ValueError(f"{path}: not a valid .safetensors file ({error}); the file is damaged or not a "
                             "checkpoint") from error
    with open(path, "rb") as f:
        zip_format = f.read(4) == b"PK\x03\x04"  # torch.save's format since 1.6; older files cannot be mapped
    try:  # mapped: roles and shapes are checked before the data is read, and a model load copies it only once
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
    except MemoryError:
        raise
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", str(error), re.S)
        if unsafe and "global" in unsafe.group(1).lower():
            raise ValueError(f"{path}: holds Python objects besides tensors ({' '.join(unsafe.group(1).split())}); "
                             "only plain state_dicts are read. For a training checkpoint, save its model "
                             "state_dict on its own first") from error
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint (not a pickle of tensors); the file is "
                         "damaged or not a checkpoint") from error
    except Exception as error:  # torch.load fails in many ways on damaged files: EOFError, RuntimeError, KeyError...
        reason = str(error).split(". ")[0].strip() or "unexpected end of file"
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {reason}); "
                         "the file is damaged or not a checkpoint (re-download or re-copy it)") from error


def save_checkpoint(source: Union[nn.Module, Mapping[str, torch.Tensor]], path, official: bool = True):
    """Write a model (in the official format when ``official``) or a state_dict to .pth or .safetensors,
    through a temporary file renamed into place."""
    sd = (official_state_dict(source) if official else source.state_dict()) if isinstance(source, nn.Module) \
        else source
    sd = OrderedDict((k, v.detach().cpu()) for k, v in sd.items())
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".partial")
    os.close(fd)
    try:
        if str(path).endswith(".safetensors"):
            safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
        else:
            torch.save(sd, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- strict loading ----
def _describe(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, TransformerConfig):
        return (f"{type(model).__name__}(depth={cfg.depth}, width={cfg.width}, L={sum(p * p for p in cfg.patch_nums)}"
                + (f", n_layers_train={cfg.n_layers_train})" if isinstance(model, HMAR) else ")"))
    return type(model).__name__


def _format_hint(sd: Mapping[str, torch.Tensor]) -> str:
    fmt = detect_format(sd)
    return f" (the checkpoint looks like a {fmt!r} file)" if fmt else ""


def mismatch_report(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> str | None:
    """None when ``sd`` fits ``model`` key for key and shape for shape (after the official extras), else a
    message listing missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    given = dict(sd)
    if hasattr(model, "lvl_1L"):
        L = model.lvl_1L.shape[1]
        mask = given.pop(MASK_KEY, None)
        if mask is not None and tuple(mask.shape) != (1, 1, L, L):
            given[MASK_KEY] = mask  # reported as a shape mismatch below
            expected = dict(expected, **{MASK_KEY: torch.empty((1, 1, L, L), device="meta")})
    usage = "quantize.ema_vocab_hit_SV"
    if usage in given and usage in expected and given[usage].shape[1:] == expected[usage].shape[1:]:
        given[usage] = expected[usage]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return None

    def listing(title, items, limit=40):
        more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"  {title} ({len(items)}):\n" + "\n".join(f"    {x}" for x in items[:limit]) + more
    parts = [listing(t, items) for t, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                ("shape mismatches", shapes)) if items]
    return f"checkpoint does not match {_describe(model)}{_format_hint(sd)}:\n" + "\n".join(parts)


def load_checkpoint(model: nn.Module, source: Source) -> nn.Module:
    """Strictly load ``source`` into ``model``; ValueError listing every missing/unexpected key and shape
    mismatch otherwise. Returns the model."""
    sd = read_state_dict(source)
    report = mismatch_report(model, sd)
    if report:
        raise ValueError(report)
    model.load_state_dict(sd, strict=True)
    return model


# ---- roles and configs read off the tensors ----
ROLE_NAMES = {"vqvae": "VQVAE", "var": "VAR", "hmar_nsp": "HMAR next-scale (NSP)",
              "hmar_mp": "HMAR masked-prediction (MP)", "hmar": "composite HMAR", "var_or_nsp": "VAR or HMAR-NSP"}


def detect_format(sd: Mapping[str, torch.Tensor]) -> str | None:
    """'vqvae', 'hmar' (composite), 'hmar_mp', 'var' / 'hmar_nsp' (told apart by the mask buffer), 'var_or_nsp'
    (no buffer), or None."""
    if "quantize.embedding.weight" in sd:
        return "vqvae"
    if any(k.startswith("base_blocks.") for k in sd) or "ns_head.weight" in sd:
        return "hmar"
    if "mask_embed.weight" in sd and "head.weight" in sd:
        return "hmar_mp"
    if "word_embed.bias" in sd and "head.weight" in sd:
        mask = sd.get(MASK_KEY)
        if mask is None or mask.shape[-1] < 2 or mask.is_meta:
            return "var_or_nsp"
        # row 1 is the first token of scale 1: it may attend position 0 (scale 0) only under the causal mask
        return "var" if bool(mask.reshape(mask.shape[-2], mask.shape[-1])[1, 0] == 0) else "hmar_nsp"
    return None


def check_role(sd: Mapping[str, torch.Tensor], expected, origin: str = "checkpoint") -> str:
    """The role of ``sd`` (a key of ROLE_NAMES) when it is one of ``expected``; ValueError naming ``origin``, the
    role found and the roles expected otherwise. A file without a mask buffer ('var_or_nsp') passes as 'var' or
    'hmar_nsp'; a VAR file never passes as HMAR-NSP nor the reverse (same keys, other attention pattern)."""
    found = detect_format(sd)
    if found in expected or (found == "var_or_nsp" and {"var", "hmar_nsp"} & set(expected)):
        return found
    if found is None:
        keys = ", ".join(list(sd)[:5]) or "none"
        raise ValueError(f"{origin}: not a VQVAE, VAR or HMAR checkpoint (first keys: {keys})")
    wanted = " or ".join(ROLE_NAMES[r] for r in expected)
    why = ""
    if {found, *expected} <= {"var", "hmar_nsp"}:
        why = (" (the keys are the same, the attention pattern is not: its mask buffer says "
               f"{'block-causal' if found == 'var' else 'block-diagonal'})")
    raise ValueError(f"{origin}: is a {ROLE_NAMES[found]} checkpoint, not a {wanted} one{why}")


def _config_from(reader, sd, patch_nums, origin):
    """``reader(sd, patch_nums)``, with a missing tensor reported as a damaged file instead of a KeyError."""
    try:
        return reader(sd, patch_nums)
    except KeyError as error:
        raise ValueError(f"{origin}: looks like a {ROLE_NAMES[detect_format(sd)]} checkpoint but has no tensor "
                         f"{error.args[0]!r}; the file is incomplete") from None


def _schedule_of(sd: Mapping[str, torch.Tensor], patch_nums):
    """The schedule: given, else read off the ``lvl_1L`` buffer (scale of every position), else by L."""
    if patch_nums is not None:
        return tuple(patch_nums)
    levels = sd.get("lvl_1L")
    if levels is not None and not levels.is_meta:
        counts = torch.bincount(levels.reshape(-1).long()).tolist()
        sides = [round(n ** 0.5) for n in counts]
        if all(s * s == n for s, n in zip(sides, counts)):
            return tuple(sides)
    L = sd["pos_1LC"].shape[1]
    for pn in PATCH_NUMS.values():
        if sum(p * p for p in pn) == L:
            return pn
    raise ValueError(f"checkpoint has sequence length L = {L}, which is no known schedule "
                     f"({ {px: sum(p * p for p in pn) for px, pn in PATCH_NUMS.items()} }); pass patch_nums")


def transformer_config_from_state_dict(sd: Mapping[str, torch.Tensor], patch_nums=None) -> TransformerConfig:
    """Depth, width, heads, classes, vocabulary, latent width, MLP ratio, n_layers_train and schedule."""
    counts = {}
    for key in sd:
        m = _BLOCK.match(key)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)) + 1)
    if "blocks" in counts:
        depth, n_train = counts["blocks"], 8
    elif "ns_blocks" in counts:
        depth, n_train = counts.get("base_blocks", 0) + counts["ns_blocks"], counts["ns_blocks"]
    else:
        raise ValueError("state_dict has no transformer blocks (blocks.* or base_blocks.*/ns_blocks.*)")
    first = "blocks.0." if "blocks" in counts else ("base_blocks.0." if "base_blocks" in counts else "ns_blocks.0.")
    head = sd["head.weight"] if "head.weight" in sd else sd["ns_head.weight"]
    width = sd["class_emb.weight"].shape[1]
    return TransformerConfig(
        depth=depth, width=width, num_heads=sd[first + "attn.scale_mul_1H11"].shape[1],
        num_classes=sd["class_emb.weight"].shape[0] - 1, vocab_size=head.shape[0],
        latent_channels=sd["word_embed.weight"].shape[1], mlp_ratio=sd[first + "ffn.fc1.weight"].shape[0] / width,
        n_layers_train=n_train, patch_nums=_schedule_of(sd, patch_nums))


def vqvae_config_from_state_dict(sd: Mapping[str, torch.Tensor], patch_nums=None) -> VQVAEConfig:
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
    phis = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("quantize.quant_resi.qresi_ls."))
    vocab, z = sd["quantize.embedding.weight"].shape
    if patch_nums is None:  # the weights do not depend on the schedule; the usage buffer has one row per scale
        patch_nums = PATCH_NUMS[1024] if sd["quantize.ema_vocab_hit_SV"].shape[0] == 14 else PATCH_NUMS[256]
    return VQVAEConfig(vocab_size=vocab, z_channels=z, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks, num_phis=phis,
                       patch_nums=tuple(patch_nums))


_CLASSES = {"var": VAR, "hmar_nsp": NextScalePrediction, "hmar_mp": MaskedPrediction, "hmar": HMAR}


def model_config(sd: Mapping[str, torch.Tensor], kind: str | None = None, patch_nums=None,
                 origin: str = "checkpoint"):
    """(kind, config) of the model ``sd`` describes, checked before anything is built: ``kind`` ("vqvae", "var",
    "hmar_nsp", "hmar_mp", "hmar") must match the file's role (detected when None); ValueError otherwise."""
    if kind is not None and kind not in ("vqvae", *_CLASSES):
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of 'vqvae', {', '.join(map(repr, _CLASSES))}")
    found = check_role(sd, (kind,) if kind else tuple(ROLE_NAMES), origin)
    if found == "var_or_nsp" and kind is None:
        raise ValueError(f"{origin}: VAR and HMAR-NSP checkpoints have the same keys and this one has no mask buffer "
                         "to tell them apart: pass kind='var' or kind='hmar_nsp'")
    kind = kind or found
    if kind == "vqvae":
        return kind, _config_from(vqvae_config_from_state_dict, sd, patch_nums, origin)
    return kind, _config_from(transformer_config_from_state_dict, sd, patch_nums, origin)


def build_model(kind: str, cfg):
    """An untrained model of ``kind`` ("vqvae", "var", "hmar_nsp", "hmar_mp", "hmar") from its config."""
    return VQVAE(cfg).eval().requires_grad_(False) if kind == "vqvae" else _CLASSES[kind](cfg)


def load_model(source: Source, kind: str | None = None, patch_nums=None, device=None):
    """Build the model a checkpoint describes and load it strictly.

    source: an official name ("hmar-d16", "var-d30", "vqvae": hub.OFFICIAL), a local file or a state_dict.
    kind: "vqvae", "var", "hmar_nsp", "hmar_mp" or "hmar"; detected from the keys when None (VAR and NSP files
    share their keys and are told apart by their mask buffer; without one, pass kind). ``patch_nums`` is needed
    only for a transformer of a non-standard length, or to use the VQVAE with another schedule (e.g. 1024 px).
    """
    sd = read_state_dict(source)
    origin = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the state_dict"
    kind, cfg = model_config(sd, kind, patch_nums, origin)
    model = build_model(kind, cfg)
    try:
        load_checkpoint(model, sd)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None
    return model.to(device) if device is not None else model


# ---- converters ----
def _block_split(key: str, depth: int, n: int):
    """('blocks', j, rest) → (branch, index in branch, rest) with branch 'base' for j < depth − n, else 'top'."""
    m = _BLOCK.match(key)
    if not m or m.group(1) != "blocks":
        return None
    j = int(m.group(2))
    return ("base", j, m.group(3)) if j < depth - n else ("top", j - (depth - n), m.group(3))


def _depth_of(sd: Mapping[str, torch.Tensor]) -> int:
    return 1 + max(int(_BLOCK.match(k).group(2)) for k in sd if k.startswith("blocks."))


def nsp_mp_to_hmar(nsp: Source, mp: Source, n_layers_train: int = 8) -> "OrderedDict[str, torch.Tensor]":
    """(next-scale, masked-prediction) state_dicts → one composite HMAR state_dict (no mask buffer)."""
    nsp, mp = read_state_dict(nsp), read_state_dict(mp)
    depth, n = _depth_of(nsp), n_layers_train
    if _depth_of(mp) != depth:
        raise ValueError(f"NSP has {depth} blocks but MP has {_depth_of(mp)}; they must come from one model")
    out = OrderedDict()
    for key, value in nsp.items():
        split = _block_split(key, depth, n)
        if key == MASK_KEY:
            continue
        if key.startswith(("head.", "head_nm.")):
            out["ns_" + key] = value
        elif key == "word_embed.bias":
            out["word_embed_bias"] = value  # the biased Linear of NSP ≡ bias-free Linear + word_embed_bias
        elif split:
            out[f"{split[0] if split[0] == 'base' else 'ns'}_blocks.{split[1]}.{split[2]}"] = value
        else:
            out[key] = value  # word_embed.weight, class_emb, pos_start, pos_1LC, lvl_embed, lvl_1L
    differing = []
    for key, value in mp.items():
        split = _block_split(key, depth, n)
        if key.startswith(("head.", "head_nm.")):
            out["mask_" + key] = value
        elif key == "mask_embed.weight":
            out[key] = value
        elif split and split[0] == "top":
            out[f"mask_blocks.{split[1]}.{split[2]}"] = value
        elif key != MASK_KEY:  # frozen during finetuning: must equal the NSP's copy
            ns_key = f"base_blocks.{split[1]}.{split[2]}" if split else key
            if ns_key in out and (out[ns_key].shape != value.shape or not torch.equal(out[ns_key], value)):
                differing.append(key)
    if differing:
        warnings.warn(f"nsp_mp_to_hmar: {len(differing)} weights the MP model should share with the NSP model "
                      f"differ (e.g. {differing[:3]}); the NSP copies are used. Is this the right pair?")
    return out


def hmar_to_nsp_mp(hmar: Source) -> tuple["OrderedDict[str, torch.Tensor]", "OrderedDict[str, torch.Tensor]"]:
    """Composite HMAR state_dict → (NSP state_dict, MP state_dict), neither with a mask buffer."""
    sd = read_state_dict(hmar)
    base = 1 + max((int(_BLOCK.match(k).group(2)) for k in sd if k.startswith("base_blocks.")), default=-1)
    nsp, mp = OrderedDict(), OrderedDict()
    for key, value in sd.items():
        m = _BLOCK.match(key)
        if m:
            j = int(m.group(2)) + (base if m.group(1) != "base_blocks" else 0)
            new = f"blocks.{j}.{m.group(3)}"
            if m.group(1) in ("base_blocks", "ns_blocks"):
                nsp[new] = value
            if m.group(1) in ("base_blocks", "mask_blocks"):
                mp[new] = value
        elif key.startswith("ns_"):
            nsp[key[3:]] = value
        elif key.startswith("mask_head"):
            mp[key[5:]] = value
        elif key == "word_embed_bias":
            nsp["word_embed.bias"] = value
            mp[key] = value
        elif key == "mask_embed.weight":
            mp[key] = value
        elif key != MASK_KEY:
            nsp[key] = value
            mp[key] = value
    return nsp, mp


# ---- export ----
def dense_mask_buffer(model) -> torch.Tensor:
    """The (1, 1, L, L) additive 0/−inf mask official files carry: block-causal for VAR, block-diagonal else."""
    levels = model.lvl_1L.view(-1, 1)
    causal = getattr(model, "pattern", "block_diagonal") == "block_causal"
    allowed = levels >= levels.T if causal else levels == levels.T
    return torch.zeros(allowed.shape, device=levels.device).masked_fill_(~allowed, -torch.inf)[None, None]


def official_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """model.state_dict() plus what the official loaders expect (the dense mask buffer of transformers), so
    the upstream code can load it with strict=True."""
    sd = model.state_dict()
    if hasattr(model, "lvl_1L"):
        sd[MASK_KEY] = dense_mask_buffer(model)
    return sd
