"""Fashion-MNIST-format photos made here, for machines without Debian's dataset-fashion-mnist.

The one writer of idx files in the project: ``make gpu-check`` trains on mosaics of these when the
GPU host lacks the real photos, and the tests (tests/fakes.py) build their tiny data sets with it.
Standard library and numpy only.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

SPLITS = {"train": "train", "val": "t10k"}  # split -> the idx files' prefix


def write_idx(path: str, array, gz: bool = True) -> str:
    """``array`` (uint8) as an idx file at ``path`` (``path + ".gz"`` when ``gz``); returns the path written."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    if gz:
        path, raw = path + ".gz", gzip.compress(raw, compresslevel=1)
    with open(path, "wb") as f:
        f.write(raw)
    return path


def write_fmnist(folder: str, images: dict, labels: dict, gz: bool = True) -> str:
    """Write ``images[split]`` (n x 28 x 28) and ``labels[split]`` (n) for split "train" and "val"; returns folder."""
    os.makedirs(folder, exist_ok=True)
    for split, prefix in SPLITS.items():
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), images[split], gz)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels[split], gz)
    return folder


def striped_photos(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28 x 28 photos of 10 classes and their labels: each class a stripe frequency and orientation,
    plus noise, so that a model has something to learn."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    freq = 0.25 + 0.15 * (labels % 5)[:, None, None]
    along = np.where((labels < 5)[:, None, None], xx[None], yy[None])
    images = 127.5 * (1 + np.sin(freq * along)) + rng.normal(0, 20, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_synthetic_fmnist(folder, n_train: int = 2000, n_val: int = 500, seed: int = 0) -> str:
    """Striped photos (:func:`striped_photos`) in Fashion-MNIST's gzipped idx files; returns the folder."""
    rng = np.random.default_rng(seed)
    (tr, trl), (va, val) = striped_photos(n_train, rng), striped_photos(n_val, rng)
    return write_fmnist(str(folder), {"train": tr, "val": va}, {"train": trl, "val": val})


__all__ = ["write_idx", "write_fmnist", "striped_photos", "write_synthetic_fmnist"]
