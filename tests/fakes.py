"""Small fakes in real file formats, shared by several test files."""

import gzip
import os
import struct

import numpy as np

N_TRAIN_PER_CLASS, N_VAL_PER_CLASS = 3, 2
TRAIN_BASE, VAL_BASE = 20, 150  # photo k of a split is filled with BASE + k


def write_idx(path, array, gz):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    if gz:
        path, raw = path + ".gz", gzip.compress(raw)
    with open(path, "wb") as f:
        f.write(raw)


def write_fake_fmnist(folder, gz=True):
    os.makedirs(folder, exist_ok=True)
    for prefix, per_class, base in (("train", N_TRAIN_PER_CLASS, TRAIN_BASE), ("t10k", N_VAL_PER_CLASS, VAL_BASE)):
        n = 10 * per_class
        labels = np.arange(n) % 10
        images = (base + np.arange(n))[:, None, None] * np.ones((1, 28, 28))
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), images, gz)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels, gz)
    return folder


REAL_FMNIST = "/usr/share/datasets/fashion-mnist"


def fmnist_root(tmp_factory):
    """The real Fashion-MNIST idx folder when installed (make data), else a tiny fake one."""
    if os.path.exists(os.path.join(REAL_FMNIST, "train-images-idx3-ubyte.gz")):
        return REAL_FMNIST
    return write_fake_fmnist(str(tmp_factory.mktemp("fmnist")))
