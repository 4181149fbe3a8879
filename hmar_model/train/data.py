"""Training data: an ImageNet-style image folder (for hmar-tokenize), token shards, synthetic tokens, and the
deterministic distributed order in which a run visits them.

Every source has ``num_samples``, ``views`` (encoded variants of one image: crops, flips) and
``get(indices, views) → (label_B int64, tokens_BL int64)``; tokens are the multi-scale code indices concatenated
scale by scale (L = Σ p_k²).

The order is a pure function of (seed, position): the run reads one infinite stream, the concatenation of a
seeded permutation per epoch, and global step s takes stream[s·G, (s + 1)·G) (G = global batch), split into
accumulation micro-batches and then ranks. A checkpoint therefore only stores the position, and the same global
batches are seen on any number of ranks.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

SHARD_FORMAT = "hmar-tokens-v1"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
MID_RESO = 1.125  # images are resized so their shorter side is 1.125·R before the R×R crop (upstream)


class DataError(ValueError):
    """Unusable data (missing folder, no images, shards from another VQVAE or schedule, too few samples)."""


# ---- images ----
class ImageFolder:
    """``root/<class>/*.jpg`` (classes = sorted sub-folders, as torchvision's DatasetFolder) with the official
    preprocessing: shorter side → round(1.125·R) (Lanczos), R×R crop, [0, 1] → [−1, 1]."""

    def __init__(self, root: str, resolution: int):
        if not os.path.isdir(root):
            raise DataError(f"data folder not found: {root!r}")
        self.root, self.resolution = root, resolution
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not self.classes:
            raise DataError(f"data folder {root!r} has no class sub-folders (expected {root}/<class>/<image>)")
        self.items = [(os.path.join(root, c, f), label) for label, c in enumerate(self.classes)
                      for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not self.items:
            raise DataError(f"data folder {root!r} has {len(self.classes)} class folders but no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, crop: str | tuple[int, int] = "center", flip: bool = False) -> torch.Tensor:
        """(3, R, R) float32 in [−1, 1]; ``crop`` "center" or a (top, left) fraction pair in [0, 1]."""
        from PIL import Image

        with Image.open(self.items[index][0]) as img:
            img = img.convert("RGB")
            R = self.resolution
            side = round(MID_RESO * R)
            w, h = img.size
            scale = side / min(w, h)
            img = img.resize((max(side, int(w * scale)) if w > h else side,
                              max(side, int(h * scale)) if h >= w else side), Image.LANCZOS)
            w, h = img.size
            if crop == "center":
                top, left = int(round((h - R) / 2)), int(round((w - R) / 2))
            else:
                top, left = int(crop[0] * (h - R + 1)) % (h - R + 1), int(crop[1] * (w - R + 1)) % (w - R + 1)
            img = img.crop((left, top, left + R, top + R))
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(R, R, 3)
        return data.permute(2, 0, 1).float().div_(127.5).sub_(1)


# ---- token sources ----
def vae_fingerprint(vqvae) -> str:
    """sha256 over the VQVAE's weights (the per-scale usage buffer excluded): tokens are only meaningful with
    the VQVAE that made them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vqvae.state_dict().items()):
        if name.endswith("ema_vocab_hit_SV"):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class SyntheticTokens:
    """``num_samples`` random token sequences and labels drawn once from ``seed`` (benchmarks, tests)."""

    views = 1

    def __init__(self, num_samples: int, patch_nums, vocab_size: int, num_classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        L = sum(p * p for p in patch_nums)
        self.num_samples = num_samples
        self.tokens_NL = torch.randint(0, vocab_size, (num_samples, L), generator=g)
        self.label_N = torch.randint(0, num_classes, (num_samples,), generator=g)

    def get(self, indices: torch.Tensor, views: torch.Tensor):
        return self.label_N[indices], self.tokens_NL[indices]


@dataclass
class ShardMeta:
    patch_nums: list
    vocab_size: int
    num_classes: int
    vae_fingerprint: str
    resolution: int
    views: int
    num_samples: int
    shards: list  # [{"name": "shard-00000", "count": n}]


def read_meta(path: str) -> ShardMeta:
    meta_file = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_file):
        raise DataError(f"{path!r} is not a token-shard folder (no meta.json); make one with hmar-tokenize")
    with open(meta_file) as f:
        meta = json.load(f)
    if meta.get("format") != SHARD_FORMAT:
        raise DataError(f"{meta_file}: format {meta.get('format')!r}, expected {SHARD_FORMAT!r}")
    return ShardMeta(**{k: meta[k] for k in ShardMeta.__dataclass_fields__})


class TokenShards:
    """hmar-tokenize's output: per shard ``<name>.tokens.u16`` (count, views, L) uint16 and ``<name>.labels.i32``
    (count,), memory-mapped; refuses shards made by another VQVAE or for another schedule."""

    def __init__(self, path: str, patch_nums, vae_fingerprint: str | None, num_classes: int):
        self.meta = meta = read_meta(path)
        if list(meta.patch_nums) != list(patch_nums):
            raise DataError(f"shards in {path!r} were made for patch_nums {meta.patch_nums} but the run uses "
                            f"{list(patch_nums)}; re-tokenise with the run's schedule")
        if vae_fingerprint is not None and meta.vae_fingerprint != vae_fingerprint:
            raise DataError(f"shards in {path!r} were made with another VQVAE (fingerprint {meta.vae_fingerprint}, "
                            f"the run's VQVAE is {vae_fingerprint}); re-tokenise with the run's vae")
        if meta.num_classes > num_classes:
            raise DataError(f"shards in {path!r} have {meta.num_classes} classes but the model has {num_classes}")
        if meta.num_samples < 1:
            raise DataError(f"shards in {path!r} hold no samples")
        L = sum(p * p for p in patch_nums)
        self.views, self.num_samples = meta.views, meta.num_samples
        self.tokens, self.labels, starts = [], [], [0]
        for shard in meta.shards:
            base = os.path.join(path, shard["name"])
            self.tokens.append(self._memmap(base + ".tokens.u16", np.uint16, (shard["count"], meta.views, L)))
            self.labels.append(self._memmap(base + ".labels.i32", np.int32, (shard["count"],)))
            starts.append(starts[-1] + shard["count"])
        self.starts = np.asarray(starts)
        if starts[-1] != meta.num_samples:
            raise DataError(f"{path}/meta.json says {meta.num_samples} samples but its shards hold {starts[-1]}")

    @staticmethod
    def _memmap(file: str, dtype, shape):
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = os.path.getsize(file) if os.path.isfile(file) else -1
        if size != expected:
            raise DataError(f"token shard {file!r} has {size} bytes, expected {expected} (missing or truncated; "
                            "re-run hmar-tokenize, which resumes)")
        return np.memmap(file, dtype=dtype, mode="r", shape=shape)

    def get(self, indices: torch.Tensor, views: torch.Tensor):
        idx, view = indices.numpy(), views.numpy()
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        tokens = np.empty((len(idx), self.tokens[0].shape[-1]), dtype=np.int64)
        labels = np.empty(len(idx), dtype=np.int64)
        for s in np.unique(shard):
            rows = np.flatnonzero(shard == s)
            local = idx[rows] - self.starts[s]
            order = np.argsort(local, kind="stable")  # sorted reads from the memmap
            tokens[rows[order]] = self.tokens[s][local[order], view[rows[order]]]
            labels[rows[order]] = self.labels[s][local[order]]
        return torch.from_numpy(labels), torch.from_numpy(tokens)


# ---- order ----
class SampleOrder:
    """Position p of the infinite stream → (sample index, view): epoch p // N visits a seeded permutation."""

    def __init__(self, num_samples: int, views: int, seed: int):
        self.num_samples, self.views, self.seed = num_samples, views, seed
        self._epoch, self._perm, self._view = -1, None, None

    def _load_epoch(self, epoch: int):
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_samples, generator=g)
            self._view = torch.randint(0, self.views, (self.num_samples,), generator=g)
            self._epoch = epoch

    def take(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, views = [], []
        while count > 0:
            epoch, offset = divmod(start, self.num_samples)
            self._load_epoch(epoch)
            n = min(count, self.num_samples - offset)
            idx.append(self._perm[offset:offset + n])
            views.append(self._view[offset:offset + n])
            start, count = start + n, count - n
        return torch.cat(idx), torch.cat(views)


class Batches:
    """The micro-batches of one rank: ``get(step, micro)`` → (label_B, tokens_BL) on ``device``.

    Global batch G per optimiser step, ``accum`` micro-steps, ``world`` ranks: micro-batch size G/(accum·world).
    A background thread prepares the next micro-batch (pinned, copied without blocking) while the GPU works.
    """

    def __init__(self, source, global_batch: int, accum: int, world: int, rank: int, seed: int, device):
        if global_batch % (accum * world):
            raise DataError(f"global batch {global_batch} is not divisible by accum × ranks = {accum} × {world}")
        if source.num_samples < world:
            raise DataError(f"{world} ranks but the dataset has only {source.num_samples} samples; every rank "
                            "needs at least one")
        self.source, self.G, self.accum, self.world, self.rank = source, global_batch, accum, world, rank
        self.micro = global_batch // (accum * world)
        self.order = SampleOrder(source.num_samples, source.views, seed)
        self.device = torch.device(device)

    def _prepare(self, step: int, micro: int):
        start = step * self.G + micro * self.micro * self.world + self.rank * self.micro
        idx, views = self.order.take(start, self.micro)
        label, tokens = self.source.get(idx, views)
        if self.device.type == "cuda":
            label, tokens = label.pin_memory(), tokens.pin_memory()
        return label, tokens

    def _to_device(self, batch):
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def iterate(self, first_step: int, last_step: int):
        """Yield (step, micro, label_B, tokens_BL) for steps [first_step, last_step), prefetching one ahead."""
        keys = [(s, m) for s in range(first_step, last_step) for m in range(self.accum)]
        if self.device.type != "cuda":
            for s, m in keys:
                yield (s, m) + self._prepare(s, m)
            return
        done = queue.Queue(maxsize=2)
        stop = threading.Event()

        def worker():
            for s, m in keys:
                if stop.is_set():
                    return
                done.put((s, m) + self._prepare(s, m))

        thread = threading.Thread(target=worker, daemon=True, name="hmar-train-data")
        thread.start()
        try:
            for _ in keys:
                s, m, label, tokens = done.get()
                yield (s, m) + self._to_device((label, tokens))
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    done.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
