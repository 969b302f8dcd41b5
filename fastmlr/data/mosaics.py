"""FashionMosaics: the built-in offline multi-label dataset.

Each image is a ``grid x grid`` canvas of 28x28 cells holding 1 to 4
Fashion-MNIST photos in random cells (the rest black); its labels are the
set of the photos' classes. Items are drawn from "outfit" scenes (summer,
winter, office, sport) with per-scene class probabilities, plus a small
chance of an off-scene item, so labels co-occur as objects do in COCO and
label dependency is worth modelling. Each item is shrunk a little and placed
at a random offset inside its cell, so where an object is is not a given.

Mosaic ``i`` of a split is a pure function of ``(seed, split, i)``: the same
in every process and DataLoader worker. Only the training augmentation
(random crop and flip) uses torch's per-worker generator.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import os
import random
import struct
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import build_grey_transform

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# Scene -> class -> probability of each item of that scene being of that class.
SCENES: dict[str, dict[str, float]] = {
    "summer": {"T-shirt/top": 0.30, "Dress": 0.30, "Sandal": 0.25, "Bag": 0.15},
    "winter": {"Coat": 0.35, "Pullover": 0.30, "Ankle boot": 0.25, "Trouser": 0.10},
    "office": {"Shirt": 0.35, "Trouser": 0.30, "Bag": 0.20, "Ankle boot": 0.15},
    "sport": {"Sneaker": 0.35, "T-shirt/top": 0.30, "Trouser": 0.20, "Pullover": 0.15},
}
# Chance that an item ignores its scene and takes any class uniformly: keeps every pair possible.
OFF_SCENE_P = 0.08
MAX_ITEMS = 4
CELL = 28
# Items are shrunk to this fraction of the cell side, drawn uniformly, so they do not fill their cell exactly.
MIN_ITEM_SCALE, MAX_ITEM_SCALE = 0.6, 1.0

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
_SPLIT_FILES = {"train": "train", "val": "t10k"}
_SPLIT_IDS = {"train": 0, "val": 1}

_SCENE_PROBS = np.array(
    [[probs.get(c, 0.0) for c in FASHION_CLASSES] for probs in SCENES.values()], dtype=np.float64
)
_SCENE_PROBS /= _SCENE_PROBS.sum(1, keepdims=True)
_SCENE_CDF = [list(np.cumsum(row)) for row in _SCENE_PROBS]

# (images path, labels path) -> (uint8 [N, 28, 28], int64 [N]); read once per process.
_IDX_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


@functools.lru_cache(maxsize=None)
def _shrink_matrix(side: int) -> np.ndarray:
    """Float32 [side, 28] rows of a triangle (antialiased bilinear) filter that shrinks 28 pixels to ``side``.

    ``W @ photo @ W.T`` resizes a photo with two tiny matmuls, cheaper than a PIL round trip per item.
    """
    scale = CELL / side
    src = np.arange(CELL, dtype=np.float64) + 0.5
    centre = (np.arange(side, dtype=np.float64) + 0.5) * scale
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centre[:, None]) / max(scale, 1.0))
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def fmnist_dir(root: str | os.PathLike | None = None) -> str:
    """The Fashion-MNIST folder: ``root``, else $FASTMLR_FMNIST_DIR, else Debian's location."""
    if root is not None:
        return os.fspath(root)
    return os.environ.get("FASTMLR_FMNIST_DIR") or DEFAULT_FMNIST_DIR


def _find_idx(folder: str, stem: str) -> str:
    for name in (f"{stem}.gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder!r}. `make data` or "
        f"`apt-get install dataset-fashion-mnist` installs it in {DEFAULT_FMNIST_DIR}; "
        f"or point FASTMLR_FMNIST_DIR (or root=) at a folder holding the idx files."
    )


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (gzipped or not) of unsigned bytes: magic 0x0000 08 <ndim>, big-endian int32 dims."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path!r} is not an unsigned-byte idx file (header {raw[:4].hex()}, expected 000008xx)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != count:
        raise ValueError(f"{path!r}: header says dims {dims} ({count} bytes), found {data.size} bytes of data")
    return data.reshape(dims)


def load_fashion_mnist(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the split's files, cached per process."""
    prefix = _SPLIT_FILES[split]
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Fashion-MNIST folder {folder!r} does not exist. `make data` or "
            f"`apt-get install dataset-fashion-mnist` installs the files in {DEFAULT_FMNIST_DIR}."
        )
    img_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    lab_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    key = (os.path.abspath(img_path), os.path.abspath(lab_path))
    if key not in _IDX_CACHE:
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.shape[1:] != (CELL, CELL):
            raise ValueError(f"{img_path!r}: expected images of shape [N, 28, 28], found {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{lab_path!r}: expected {images.shape[0]} labels to match {img_path!r}, found shape {labels.shape}"
            )
        if labels.size and labels.max() >= len(FASHION_CLASSES):
            raise ValueError(f"{lab_path!r}: label {labels.max()} out of range 0..{len(FASHION_CLASSES) - 1}")
        _IDX_CACHE[key] = (images, labels.astype(np.int64))
    return _IDX_CACHE[key]


def photos_by_class(root: str, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The Fashion-MNIST photos of ``split`` and, per class, the indices of its photos.

    Raises ValueError naming the folder when a class has no photo (the datasets draw from every class).
    """
    photos, labels = load_fashion_mnist(root, split)
    by_class = [np.flatnonzero(labels == c) for c in range(len(FASHION_CLASSES))]
    empty = [FASHION_CLASSES[c] for c, idx in enumerate(by_class) if idx.size == 0]
    if empty:
        raise ValueError(f"Fashion-MNIST {split} files in {root!r} hold no photo of class(es) {empty}")
    return photos, by_class


class FashionMosaics(Dataset):
    """Multi-label mosaics of Fashion-MNIST photos.

    ``split="train"`` uses the Fashion-MNIST train files, ``"val"`` the t10k
    files. Items: (image Tensor[3, S, S] normalised, target Tensor[10] float32,
    ignore Tensor[10] bool all False). The canvas is ``grid * 28`` pixels
    square, grey copied to 3 channels, then resized to ``image_size`` as
    :func:`build_transform` does (or by ``transform``, which receives the RGB PIL canvas).
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 2000,
        image_size: int = 64,
        train: bool = False,
        seed: int = 0,
        root: str | os.PathLike | None = None,
        grid: int = 2,
        transform: Callable | None = None,
    ):
        if split not in _SPLIT_FILES:
            raise ValueError(f"FashionMosaics split must be one of {list(_SPLIT_FILES)}, found {split!r}")
        if grid < 1:
            raise ValueError(f"grid must be >= 1, found {grid}")
        if not 0 <= num_images < 2**32:
            raise ValueError(f"num_images must be in [0, 2**32), found {num_images}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, found {seed}")
        self.split = split
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.grid = int(grid)
        self.root = fmnist_dir(root)
        self.classes = list(FASHION_CLASSES)
        # The default runs resize/crop/flip on the grey canvas, then copies it to 3 channels: the same
        # tensor as build_transform on the RGB canvas at a third of the cost. A user transform gets RGB.
        self.transform = transform if transform is not None else build_grey_transform(image_size, train)
        self._grey_transform = transform is None
        self._photos, self._by_class = photos_by_class(self.root, split)

    def __len__(self) -> int:
        return self.num_images

    def _layout(self, i: int) -> dict:
        """The placement record of mosaic ``i``: a pure function of (seed, split, i).

        Returns {"scene": name, "items": [{"cell", "class", "photo", "side", "top", "left"}, ...]}
        with ``cell`` in row-major order, ``photo`` an index into the split's
        idx file, ``side`` the item's pixel size and (top, left) its offset in the cell.
        """
        if not 0 <= i < self.num_images:
            raise IndexError(f"mosaic index {i} out of range for {self.num_images} images")
        # random.Random seeded by an int is the same in every process (no hash randomisation)
        # and seeds in microseconds, where a numpy Generator costs tens of them per mosaic.
        rng = random.Random((self.seed << 34) | (_SPLIT_IDS[self.split] << 32) | i)
        scene = rng.randrange(len(SCENES))
        n_cells = self.grid * self.grid
        n_items = rng.randint(1, min(MAX_ITEMS, n_cells))
        items = []
        for cell in sorted(rng.sample(range(n_cells), n_items)):
            if rng.random() < OFF_SCENE_P:
                cls = rng.randrange(len(self.classes))
            else:
                cls = min(bisect.bisect_right(_SCENE_CDF[scene], rng.random()), len(self.classes) - 1)
            pool = self._by_class[cls]
            photo = int(pool[rng.randrange(pool.size)])
            side = round(CELL * rng.uniform(MIN_ITEM_SCALE, MAX_ITEM_SCALE))
            top, left = rng.randint(0, CELL - side), rng.randint(0, CELL - side)
            items.append({"cell": cell, "class": cls, "photo": photo, "side": side, "top": top, "left": left})
        return {"scene": list(SCENES)[scene], "items": items}

    def _target(self, layout: dict) -> torch.Tensor:
        target = torch.zeros(len(self.classes))
        for item in layout["items"]:
            target[item["class"]] = 1.0
        return target

    def render(self, i: int) -> np.ndarray:
        """The grey canvas of mosaic ``i``, uint8 [grid*28, grid*28], before any transform."""
        return self._render(self._layout(i))

    def _render(self, layout: dict) -> np.ndarray:
        canvas = np.zeros((self.grid * CELL, self.grid * CELL), dtype=np.uint8)
        for item in layout["items"]:
            photo = self._photos[item["photo"]]
            side = item["side"]
            if side != CELL:
                w = _shrink_matrix(side)
                photo = np.clip(w @ photo.astype(np.float32) @ w.T + 0.5, 0, 255).astype(np.uint8)
            y = (item["cell"] // self.grid) * CELL + item["top"]
            x = (item["cell"] % self.grid) * CELL + item["left"]
            canvas[y : y + side, x : x + side] = photo
        return canvas

    def __getitem__(self, i: int):
        layout = self._layout(i)
        img = Image.fromarray(self._render(layout))
        if not self._grey_transform:
            img = img.convert("RGB")
        target = self._target(layout)
        return self.transform(img), target, torch.zeros(len(self.classes), dtype=torch.bool)

    def targets(self) -> torch.Tensor:
        """All targets, Tensor[N, 10] float32 (from the layouts; nothing is rendered)."""
        if self.num_images == 0:
            return torch.zeros(0, len(self.classes))
        return torch.stack([self._target(self._layout(i)) for i in range(self.num_images)])

    def cooccurrence(self) -> torch.Tensor:
        """Empirical label co-occurrence over the split, Tensor[10, 10] float32.

        Entry (a, b) counts the mosaics whose label set holds both a and b; the
        diagonal counts the mosaics holding a.
        """
        t = self.targets()
        return t.T @ t
