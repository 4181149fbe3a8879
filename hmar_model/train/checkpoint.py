"""Run checkpoints: atomic, sharded (torch.distributed.checkpoint), resumable on another world size, pruned.

Layout of a run folder::

    RUN/config.yaml           the resolved config (``--resume RUN`` reads it)
    RUN/log.jsonl             one JSON line per logged step
    RUN/ckpt/step-00000040/   model + optimiser + EMA (DCP shards, re-shardable), trainer.pt (step, data position,
                              grad scaler, config, model fingerprint), rng-rank{r}.pt, manifest.json (written last)
    RUN/export/model.pth      the final weights in the official state_dict layout (hmar-sample opens it)

A checkpoint is written into ``ckpt/.step-N.partial`` and renamed into place after every rank has finished, so a
crash never leaves a half-written ``step-N``. ``manifest.json`` lists every file with its size: a checkpoint whose
files were truncated afterwards (full disk, copy interrupted) is skipped, with a warning, for the previous one.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

CKPT_DIR = "ckpt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def model_fingerprint(model: torch.nn.Module) -> str:
    """Class, parameter names and full shapes: a checkpoint of another model or recipe does not match."""
    from torch.distributed.tensor import DTensor

    digest = hashlib.sha256(type(model).__name__.removeprefix("FSDP").encode())
    for name, p in model.named_parameters():
        shape = tuple(p.shape) if not isinstance(p, DTensor) else tuple(p.size())
        digest.update(f"{name}:{shape};".encode())
    return digest.hexdigest()[:16]


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def _dcp_quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():  # single-process runs: DCP says it assumes one process, which is the intent
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        return fn(*args, **kwargs)


def sharded_state(model, optimizer, ema: dict | None) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd, **({"ema": ema} if ema is not None else {})}


def save(run_dir: str, step: int, model, optimizer, ema: dict | None, trainer_state: dict, keep_last: int) -> str:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    root = os.path.join(run_dir, CKPT_DIR)
    name = f"step-{step:08d}"
    tmp, final = os.path.join(root, f".{name}.partial"), os.path.join(root, name)
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    _dcp_quietly(dcp.save, sharded_state(model, optimizer, ema), checkpoint_id=tmp)
    torch.save(rng_state(), os.path.join(tmp, f"rng-rank{_rank()}.pt"))
    _barrier()
    if _rank() == 0:
        torch.save(trainer_state, os.path.join(tmp, "trainer.pt"))
        files = {f: os.path.getsize(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
        _write_json(os.path.join(tmp, "manifest.json"), {"step": step, "files": files})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(root, keep_last)
    _barrier()
    return final


def _write_json(path: str, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """[(step, folder)] of the finished checkpoints, oldest first."""
    root = os.path.join(run_dir, CKPT_DIR)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, d)) for d in os.listdir(root) if (m := _STEP_DIR.match(d))]
    return sorted(found)


def problem(folder: str) -> str | None:
    """Why a checkpoint cannot be used (no manifest, missing or truncated file), or None."""
    manifest = os.path.join(folder, "manifest.json")
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"its manifest.json is missing or unreadable ({error})"
    for name, size in files.items():
        path = os.path.join(folder, name)
        actual = os.path.getsize(path) if os.path.isfile(path) else None
        if actual != size:
            return f"{name} has {'no file' if actual is None else f'{actual} bytes'}, expected {size} bytes"
    return None


def prune(root: str, keep_last: int):
    """Keep the newest ``keep_last`` usable checkpoints; drop older ones and stale partial folders."""
    usable = [(s, f) for s, f in checkpoints(os.path.dirname(root)) if problem(f) is None]
    for _, folder in usable[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
    newest = usable[-1][0] if usable else -1
    for d in os.listdir(root):
        m = re.match(r"^\.step-(\d{8})\.partial$", d)
        if m and int(m.group(1)) <= newest:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def load_latest(run_dir: str, model, optimizer, ema: dict | None, fingerprint: str, say=print) -> dict | None:
    """Restore the newest usable checkpoint into model (wrapped or not)/optimizer/EMA and this rank's RNGs;
    returns its trainer state, or None when there is none. ``fingerprint``: ``model_fingerprint`` of the unwrapped
    model, compared with the checkpoint's. A damaged checkpoint is reported and the previous one is tried."""
    for step, folder in reversed(checkpoints(run_dir)):
        why = problem(folder)
        if why is None:
            try:
                trainer_state = torch.load(os.path.join(folder, "trainer.pt"), map_location="cpu", weights_only=False)
                if trainer_state["model_fingerprint"] != fingerprint:
                    raise ResumeMismatch(f"checkpoint {folder} holds another model (fingerprint "
                                         f"{trainer_state['model_fingerprint']}, this run's model is "
                                         f"{fingerprint})")
                state = sharded_state(model, optimizer, ema)
                _dcp_quietly(dcp.load, state, checkpoint_id=folder)
                set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                               options=StateDictOptions(strict=True))
                if ema is not None:
                    for k, v in state["ema"].items():
                        ema[k].copy_(v)
            except ResumeMismatch:
                raise
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint: report it and fall back
                why = f"it cannot be read ({type(error).__name__}: {error})"
        if why is not None:
            say(f"hmar-train: checkpoint {os.path.basename(folder)} is damaged: {why}; falling back to the previous "
                "one")
            continue
        rng_file = os.path.join(folder, f"rng-rank{_rank()}.pt")
        if os.path.isfile(rng_file):
            set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
        else:
            say(f"hmar-train: checkpoint {os.path.basename(folder)} has no RNG state for rank {_rank()} (it was "
                "saved by fewer ranks); this rank's RNGs are re-seeded, so label dropout / drop path differ from an "
                "uninterrupted run")
        trainer_state["folder"] = folder
        return trainer_state
    return None


class ResumeMismatch(ValueError):
    """The run folder's checkpoint belongs to another model or recipe."""
