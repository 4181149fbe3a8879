"""The FID sample set: N images per class from a VAR/HMAR model, in the ADM evaluator's .npz format.

    generate_samples(model, vqvae, "samples.npz", per_class=50, cfg=1.7, top_k=1000, top_p=0.99)
    # → samples.npz: arr_0 uint8 (50000, 256, 256, 3), arr_1 int64 (50000,) class labels (as ADM's sampler writes)

Order and randomness: image n is of class ``classes[n // per_class]``; the list is cut into batches of
``batch_size`` images and batch b is sampled with seed ``seed + b``. The default batch_size is
``DEFAULT_BATCH_SIZE`` (250, chosen for speed on an H200); batch_size = per_class with seed 0 is upstream's loop
(class i sampled as one batch of 50 with seed i). Every batch size gives equally valid random draws, but other ones:
the same seed with another batch size gives other images. Every batch's images depend only on (settings, b), never
on how many processes ran or whether the run was resumed.

Speed: on CUDA the sampler runs compiled by default (``fast_sampling.fast_sampler``: compiled HMAR passes and
decoder, one compilation for the whole run; ``compile=False`` gives the eager reference). Each batch's shard is
written by a background thread while the next batch samples.

Resumable: each finished batch is written atomically to ``X.shards/batch_XXXXXX.npy`` (for ``out`` = ``X.npz``);
a rerun with the same settings skips them (other settings are refused). Under ``torchrun`` rank r of w takes
batches r, r + w, …; rank 0 joins the shards into ``out`` once all ranks are done and removes the shard folder
(unless ``keep_shards``).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cli.common import to_uint8
from ..fast_sampling import fast_sampler, is_compiled
from ..sampling import sample

SETTINGS_FILE = "settings.json"
DEFAULT_BATCH_SIZE = 250  # H200, d16/d30 at 256 px: large enough to fill the GPU, 200 batches for 50,000 images


# ---- plan ----
def image_labels(classes: Sequence[int], per_class: int) -> np.ndarray:
    """(N,) class of every image: per_class images of each class, in order."""
    return np.repeat(np.asarray(classes, dtype=np.int64), per_class)


def batch_bounds(num_images: int, batch_size: int) -> list[tuple[int, int]]:
    """[(begin, end)] image ranges of the batches."""
    return [(b, min(b + batch_size, num_images)) for b in range(0, num_images, batch_size)]


def rank_batches(num_batches: int, rank: int, world_size: int) -> range:
    """The batches of one process: disjoint across ranks, together all of them."""
    return range(rank, num_batches, world_size)


def shard_path(work_dir: str, b: int) -> str:
    return os.path.join(work_dir, f"batch_{b:06d}.npy")


# ---- files ----
def atomic_save_npy(path: str, array: np.ndarray):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_save_png(path: str, image_HW3: np.ndarray):
    from PIL import Image
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image_HW3).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def finished_shard(path: str, expected_shape: tuple) -> bool:
    """A shard written by an earlier run with the expected (B, H, W, 3) uint8 shape (H, W unknown: None)."""
    if not os.path.isfile(path):
        return False
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return array.dtype == np.uint8 and len(array.shape) == 4 and array.shape[0] == expected_shape[0] and \
        array.shape[3] == 3


def write_npz(path: str, shard_paths: Sequence[str], labels: np.ndarray):
    """Stream the shards into one uncompressed .npz (arr_0 images, arr_1 labels) through a temporary file, so that
    50,000 images never sit in memory at once."""
    first = np.load(shard_paths[0], mmap_mode="r")
    shape = (len(labels),) + tuple(first.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                written = 0
                for p in shard_paths:
                    shard = np.load(p, mmap_mode="r")
                    if tuple(shard.shape[1:]) != shape[1:]:
                        raise ValueError(f"{p}: images {tuple(shard.shape[1:])} differ from {shape[1:]}")
                    f.write(np.ascontiguousarray(shard).tobytes())
                    written += len(shard)
                assert written == len(labels), (written, len(labels))
            with zf.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, labels)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_settings(work_dir: str, settings: dict):
    """Record the settings of a fresh run, or refuse to resume shards made with other settings."""
    path = os.path.join(work_dir, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{work_dir} holds batches generated with other settings (differing: {changed}); "
                             "rerun with the same settings to resume, or delete that folder to start over")
        return
    fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---- processes ----
def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def barrier(world_size: int):
    """Wait for every rank (gloo: works whatever the device; generation can take hours, hence the timeout)."""
    if world_size == 1:
        return
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    dist.barrier()


# ---- the loop ----
def generate_samples(model, vqvae, out: str, *, per_class: int = 50, classes: Optional[Sequence[int]] = None,
                     batch_size: Optional[int] = None, seed: int = 0, cfg: float = 1.5, top_k: int = 900,
                     top_p: float = 0.96, mask_schedule="default", refine_guidance: Optional[float] = None,
                     more_smooth: bool = False, dtype: Optional[torch.dtype] = None,
                     decode_chunk: Optional[int] = None, png_dir: Optional[str] = None, keep_shards: bool = False,
                     description: Optional[dict] = None, rank: int = 0, world_size: int = 1,
                     progress: bool = True, compile: Optional[bool] = None) -> Optional[str]:
    """Generate the sample set into ``out`` (.npz); returns ``out`` on rank 0, None on other ranks.

    ``batch_size``: None → ``DEFAULT_BATCH_SIZE`` (per_class gives the official seeds, see the module docstring).
    ``compile``: the fast compiled sampler (None: on for CUDA; see ``fast_sampling.resolve_compile``).

    ``description``: what identifies the model (e.g. checkpoint paths), stored with the settings so that a resume
    with another model is refused. ``png_dir``: also write every image as ``{class}_{j}.png`` (upstream's names).
    """
    if not str(out).endswith(".npz"):
        raise ValueError(f"out must be a .npz path (the ADM evaluator's format), got {out!r}")
    classes = list(range(model.num_classes)) if classes is None else [int(c) for c in classes]
    if not classes or min(classes) < 0 or max(classes) > model.num_classes:
        raise ValueError(f"classes must be in [0, {model.num_classes}] ({model.num_classes} = unconditional), "
                         f"got {classes[:10]}{'…' if len(classes) > 10 else ''}")
    if len(set(classes)) != len(classes):
        raise ValueError("classes must not repeat (use per_class for more images of a class)")
    if per_class < 1:
        raise ValueError(f"per_class must be ≥ 1, got {per_class}")
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if os.path.exists(out):
        raise FileExistsError(f"{out} already exists; delete it or choose another output path")

    model, vqvae = fast_sampler(model, vqvae, compile=compile, dtype=dtype)  # once: one compilation for every batch
    labels = image_labels(classes, per_class)
    bounds = batch_bounds(len(labels), batch_size)
    work_dir = str(out)[:-len(".npz")] + ".shards"
    os.makedirs(work_dir, exist_ok=True)
    if png_dir:
        os.makedirs(png_dir, exist_ok=True)
    settings = {"classes": classes, "per_class": per_class, "batch_size": batch_size, "seed": seed, "cfg": cfg,
                "top_k": top_k, "top_p": top_p, "mask_schedule": mask_schedule, "refine_guidance": refine_guidance,
                "more_smooth": more_smooth, "dtype": str(dtype), "compiled": is_compiled(model, vqvae),
                "model": description or {}}
    check_settings(work_dir, json.loads(json.dumps(settings)))

    mine = rank_batches(len(bounds), rank, world_size)
    todo = [b for b in mine if not finished_shard(shard_path(work_dir, b), (bounds[b][1] - bounds[b][0],))]
    done_images = sum(bounds[b][1] - bounds[b][0] for b in mine) - sum(bounds[b][1] - bounds[b][0] for b in todo)
    bar = tqdm(total=sum(bounds[b][1] - bounds[b][0] for b in mine), initial=done_images, unit="img",
               desc=f"generate (rank {rank}/{world_size})" if world_size > 1 else "generate",
               disable=not progress or rank != 0, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=8) as png_writers, ThreadPoolExecutor(max_workers=1) as shard_writer:
        saving = None  # the previous batch's shard, written while this batch samples
        for b in todo:
            begin, end = bounds[b]
            images = sample(model, vqvae, labels[begin:end].tolist(), cfg=cfg, top_k=top_k, top_p=top_p,
                            seed=seed + b, mask_schedule=mask_schedule, refine_guidance=refine_guidance,
                            more_smooth=more_smooth, dtype=dtype, decode_chunk=decode_chunk)
            images_BHW3 = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
            if png_dir:
                names = [os.path.join(png_dir, f"{labels[n]}_{n % per_class}.png") for n in range(begin, end)]
                list(png_writers.map(atomic_save_png, names, images_BHW3))
            if saving is not None:
                saving.result()  # raises the writer's error, if any
            saving = shard_writer.submit(atomic_save_npy, shard_path(work_dir, b), images_BHW3)
            bar.update(end - begin)
        if saving is not None:
            saving.result()
    bar.close()

    barrier(world_size)
    if rank != 0:
        return None
    missing = [b for b in range(len(bounds)) if not os.path.isfile(shard_path(work_dir, b))]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(bounds)} batches are missing in {work_dir} (did a rank fail?); "
                           "rerun the same command to finish them")
    write_npz(str(out), [shard_path(work_dir, b) for b in range(len(bounds))], labels)
    if not keep_shards:
        shutil.rmtree(work_dir)
    return str(out)

