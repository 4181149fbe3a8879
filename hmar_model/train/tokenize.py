"""Encode an image folder once into multi-scale token shards, so a training step never runs the VQVAE encoder.

    summary = tokenize_folder("imagenet/train", "shards256", vae="vae_ch160v4096z32.pth", patch_nums=PATCH_NUMS[256])

Each image gives ``views`` encodings (view 0: the centre crop, then seeded random crops), doubled by ``flip`` (the
mirrored crops). Shards of ``shard_size`` images are written atomically with a ``<name>.json`` marker last; a rerun
skips finished shards, so an interrupted job resumes. Unreadable images are skipped, counted and listed in
meta.json; the job goes on.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from tqdm import tqdm

from .data import SHARD_FORMAT, DataError, ImageFolder, vae_fingerprint
from .models import build_vae


def _write_atomic(path: str, data: bytes):
    with open(path + ".partial", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".partial", path)


def _crops(index: int, views: int, flip: bool, seed: int) -> list[tuple]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    crops = ["center"] + [tuple(torch.rand(2, generator=g).tolist()) for _ in range(views - 1)]
    return [(c, False) for c in crops] + ([(c, True) for c in crops] if flip else [])


@torch.no_grad()
def _encode_shard(folder, vqvae, indices, views, flip, seed, batch, device, bar):
    """→ (tokens (n, V, L) uint16, labels (n,) int32, skipped [(path, reason)])."""
    tokens, labels, skipped = [], [], []
    pending_img, pending_label = [], []

    def flush():
        if not pending_img:
            return
        img = torch.stack(pending_img).to(device)  # (b·V, 3, R, R)
        idx_BL = torch.cat(vqvae.img_to_indices(img), dim=1).cpu()
        tokens.append(idx_BL.view(len(pending_label), -1, idx_BL.shape[1]).numpy().astype(np.uint16))
        labels.extend(pending_label)
        pending_img.clear()
        pending_label.clear()

    for i in indices:
        try:
            pending_img.extend(folder.load(i, crop, flipped) for crop, flipped in _crops(i, views, flip, seed))
            pending_label.append(folder.items[i][1])
        except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
            del pending_img[len(pending_label) * len(_crops(i, views, flip, seed)):]
            skipped.append((folder.items[i][0], f"{type(error).__name__}: {error}"))
        if len(pending_label) >= batch:
            flush()
        bar.update(1)
    flush()
    n_views = views * (2 if flip else 1)
    L = sum(p * p for p in vqvae.cfg.patch_nums)
    out = np.concatenate(tokens) if tokens else np.zeros((0, n_views, L), np.uint16)
    return out, np.asarray(labels, dtype=np.int32), skipped


def tokenize_folder(data: str, out: str, vae: str, patch_nums, vae_seed: int = 0, views: int = 1,
                    flip: bool = False, batch: int = 64, shard_size: int = 50_000, seed: int = 0, device="cpu",
                    say=print) -> dict:
    """Tokenise ``data`` (``<class>/<image>`` folders) into ``out``; returns meta.json's content."""
    if views < 1 or batch < 1 or shard_size < 1:
        raise ValueError(f"views, batch and shard_size must be ≥ 1, got {views}, {batch}, {shard_size}")
    patch_nums = tuple(patch_nums)
    vqvae = build_vae(vae, vae_seed, patch_nums, device)
    resolution = patch_nums[-1] * vqvae.cfg.downsample
    folder = ImageFolder(data, resolution)
    params = {"format": SHARD_FORMAT, "patch_nums": list(patch_nums), "vocab_size": vqvae.cfg.vocab_size,
              "num_classes": len(folder.classes), "vae_fingerprint": vae_fingerprint(vqvae),
              "resolution": resolution, "views": views * (2 if flip else 1), "seed": seed,
              "images": len(folder)}
    os.makedirs(out, exist_ok=True)
    job_file = os.path.join(out, "job.json")
    if os.path.isfile(job_file):
        with open(job_file) as f:
            previous = json.load(f)
        if previous != params:
            changed = [k for k in params if previous.get(k) != params[k]]
            raise DataError(f"{out} holds shards of another tokenisation (different {', '.join(changed)}); "
                            "use an empty folder")
    else:
        _write_atomic(job_file, json.dumps(params, indent=1).encode())
    shards, skipped = [], []
    starts = range(0, len(folder), shard_size)
    with tqdm(total=len(folder), desc="hmar-tokenize", dynamic_ncols=True) as bar:
        for number, start in enumerate(starts):
            name = f"shard-{number:05d}"
            marker = os.path.join(out, name + ".json")
            indices = range(start, min(start + shard_size, len(folder)))
            if not os.path.isfile(marker):
                tokens, labels, bad = _encode_shard(folder, vqvae, indices, views, flip, seed, batch, device, bar)
                _write_atomic(os.path.join(out, name + ".tokens.u16"), tokens.tobytes())
                _write_atomic(os.path.join(out, name + ".labels.i32"), labels.tobytes())
                _write_atomic(marker, json.dumps({"count": len(labels), "skipped": bad}).encode())
            else:
                bar.update(len(indices))
            with open(marker) as f:
                done = json.load(f)
            shards.append({"name": name, "count": done["count"]})
            skipped += done["skipped"]
    meta = {**params, "num_samples": sum(s["count"] for s in shards), "classes": folder.classes,
            "shards": shards, "skipped": skipped}
    if meta["num_samples"] == 0:
        raise DataError(f"none of the {len(folder)} images in {data!r} could be read ({skipped[0][1]})")
    _write_atomic(os.path.join(out, "meta.json"), json.dumps(meta, indent=1).encode())
    if skipped:
        say(f"hmar-tokenize: skipped {len(skipped)} unreadable image(s) (listed in {out}/meta.json), e.g. "
            f"{skipped[0][0]}: {skipped[0][1]}")
    say(f"hmar-tokenize: {meta['num_samples']} images × {meta['views']} view(s) of {len(folder.classes)} classes → "
        f"{len(shards)} shard(s) in {out}")
    return meta
