"""Image sets for the metrics: ADM-style .npz files, image folders and PNG/JPEG lists, read in batches.

    source = open_source("samples.npz")       # or a folder, or a .txt list of image paths (one a line)
    source.num_images, source.image_shape     # (N, (H, W, 3)); source.stats for .npz files holding mu/sigma
    for batch in source.batches(64): ...      # uint8 (B, H, W, 3)

A .npz is read as the ADM evaluator does: ``arr_0`` uint8 (N, H, W, 3) images, optionally precomputed
``mu``/``sigma`` (and ``mu_s``/``sigma_s`` for sFID). An uncompressed ``arr_0`` (``np.savez``) is memory-mapped,
so 50,000 images at 256 px (9.8 GB) are streamed, not loaded. Every problem raises ImageSetError naming the file.
"""
from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
LIST_SUFFIXES = (".txt", ".lst")


class ImageSetError(ValueError):
    """A SAMPLES/REFERENCE input that cannot be used; the message names the file and the problem."""


class ImageSet:
    """Images to feed the Inception network, and/or precomputed statistics (``stats``: name → (mu, sigma))."""

    def __init__(self, name: str, array: Optional[np.ndarray] = None, files: Optional[list] = None,
                 stats: Optional[dict] = None):
        self.name, self.array, self.files, self.stats = name, array, files, stats or {}
        self.image_shape = None
        if array is not None:
            self.image_shape = tuple(array.shape[1:])
        elif files:
            self.image_shape = _read_image(files[0]).shape

    @property
    def num_images(self) -> int:
        if self.array is not None:
            return len(self.array)
        return len(self.files) if self.files else 0

    @property
    def has_images(self) -> bool:
        return self.num_images > 0

    def batches(self, batch_size: int, workers: int = 8) -> Iterator[np.ndarray]:
        """uint8 (B, H, W, 3) batches in order; folders/lists are decoded by a thread pool."""
        if self.array is not None:
            for i in range(0, len(self.array), batch_size):
                yield np.array(self.array[i:i + batch_size])  # a writable copy of the mapped rows
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i in range(0, len(self.files), batch_size):
                images = list(pool.map(_read_image, self.files[i:i + batch_size]))
                for path, image in zip(self.files[i:i + batch_size], images):
                    if image.shape != self.image_shape:
                        raise ImageSetError(f"{path}: image is {image.shape[1]}×{image.shape[0]} but "
                                            f"{self.files[0]} is {self.image_shape[1]}×{self.image_shape[0]}; "
                                            f"all images of {self.name} must have one size")
                yield np.stack(images)


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ImageSetError(f"{path}: not a readable image ({error})") from None


def _npz_member_memmap(path: str, member: str) -> Optional[np.ndarray]:
    """A read-only memory map of an uncompressed .npy member of a zip (np.savez), or None if compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            return None
        shape, fortran, dtype = readers[version](f)
        offset = f.tell()
    if fortran or dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _check_images(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ImageSetError(f"{name}: arr_0 must be uint8 images (N, H, W, 3) as the ADM evaluator reads them, got "
                            f"{array.dtype} {tuple(array.shape)}")
    return array


def _open_npz(path: str) -> ImageSet:
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            stats = {}
            for kind, (mu, sigma) in {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}.items():
                if mu in keys and sigma in keys:
                    stats[kind] = (npz[mu].astype(np.float64), npz[sigma].astype(np.float64))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ImageSetError(f"{path}: not a readable .npz file ({error})") from None
    if "arr_0" not in keys and "pool" not in stats:
        raise ImageSetError(f"{path}: expected 'arr_0' (uint8 images N×H×W×3) or precomputed 'mu' and 'sigma', "
                            f"found {sorted(keys)}")
    for kind, (mu, sigma) in stats.items():
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and
                                                                     np.isfinite(sigma).all()):
            raise ImageSetError(f"{path}: precomputed {kind} statistics must be finite, mu (D,) and sigma (D, D); "
                                f"got {mu.shape} and {sigma.shape}")
    array = None
    if "arr_0" in keys:
        array = _npz_member_memmap(path, "arr_0.npy")
        if array is None:  # compressed (np.savez_compressed): has to be read whole
            with np.load(path) as npz:
                array = npz["arr_0"]
        array = _check_images(array, path)
    return ImageSet(path, array=array, stats=stats)


def _list_folder(path: str) -> list:
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            if not name.lower().endswith(IMAGE_SUFFIXES):
                raise ImageSetError(f"{full}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}) in the image "
                                    f"folder {path}; move it out or pass a list of images")
            files.append(full)
    return files


def _read_list(path: str) -> list:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    files = [line if os.path.isabs(line) else os.path.join(base, line) for line in lines]
    for number, file in enumerate(files, 1):
        if not os.path.isfile(file):
            raise ImageSetError(f"{path}: line {number}: {file} does not exist")
        if not file.lower().endswith(IMAGE_SUFFIXES):
            raise ImageSetError(f"{path}: line {number}: {file} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
    return files


def open_source(path: str, min_images: int = 2) -> ImageSet:
    """Open SAMPLES/REFERENCE: a .npz, an image folder, or a text file listing images (relative to the list).

    Checks that there are at least ``min_images`` images (or precomputed statistics), that all images have the
    first one's size, and that every file of a folder is an image.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = _list_folder(path)
        images = ImageSet(path, files=files)
    elif not os.path.exists(path):
        raise ImageSetError(f"{path}: no such file or folder")
    elif path.lower().endswith(".npz"):
        images = _open_npz(path)
    elif path.lower().endswith(LIST_SUFFIXES):
        images = ImageSet(path, files=_read_list(path))
    elif path.lower().endswith(IMAGE_SUFFIXES):
        raise ImageSetError(f"{path}: a single image; give a folder, a .txt list of images or a .npz")
    else:
        raise ImageSetError(f"{path}: unknown input type; expected a .npz (ADM format), an image folder or a .txt "
                            "list of image paths")
    if images.has_images and images.num_images < min_images:
        raise ImageSetError(f"{path}: {images.num_images} image(s); the metrics need at least {min_images} "
                            "(a covariance needs 2)")
    if not images.has_images and not images.stats:
        raise ImageSetError(f"{path}: no images found")
    return images
