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


class FakeTRT:
    """The parts of the ``tensorrt`` module a runner reads: enums only (no GPU, no engine file)."""

    class DataType:
        FLOAT, HALF, INT32 = "DataType.FLOAT", "DataType.HALF", "DataType.INT32"

    class TensorIOMode:
        INPUT, OUTPUT = "TensorIOMode.INPUT", "TensorIOMode.OUTPUT"


class FakeEngine:
    """An ``ICudaEngine`` built by fastmlr.deploy.trt: ``images`` [-1, 3, S, S] -> ``logits``, ``probs`` [-1, C].

    ``tensors``: name -> (mode, dtype, shape), to make a wrong engine; ``profile``: (min, opt, max) batch.
    """

    def __init__(self, image_size=64, classes=10, profile=(1, 4, 8), tensors=None, profiles=1):
        trt = FakeTRT
        self.tensors = tensors or {
            "images": (trt.TensorIOMode.INPUT, trt.DataType.FLOAT, (-1, 3, image_size, image_size)),
            "logits": (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT, (-1, classes)),
            "probs": (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT, (-1, classes)),
        }
        self.profile, self.num_optimization_profiles = profile, profiles
        self.image_size = image_size

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, profile):
        assert profile < self.num_optimization_profiles
        tail = tuple(self.tensors[name][2][1:])
        return [(b, *tail) for b in self.profile]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    """An ``IExecutionContext``: ``set_input_shape`` answers False outside the profile (as TensorRT does),
    ``set_tensor_address`` False for a null pointer or an unknown name; ``refuse`` forces False for a name."""

    def __init__(self, engine, refuse=()):
        self.engine, self.refuse, self.shapes, self.addresses = engine, set(refuse), {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        ok = name in self.engine.tensors and name not in self.refuse and lo <= shape[0] <= hi
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name):
        shape = self.engine.get_tensor_shape(name)
        n = self.shapes.get("images", (-1,))[0]
        return (n, *shape[1:])

    def set_tensor_address(self, name, ptr):
        ok = name in self.engine.tensors and name not in self.refuse and ptr != 0
        if ok:
            self.addresses[name] = ptr
        return ok
