"""Datasets, transforms and batching for multi-label image recognition.

Every dataset yields ``(image Tensor[3, S, S], target Tensor[C], ignore Tensor[C] bool)``
or ``None`` for an unreadable image; batch with :func:`collate_skip`.
"""

from __future__ import annotations

import torch

from .datasets import (
    VOC_CLASSES,
    COCODataset,
    ImageListDataset,
    ListDataset,
    VOCDataset,
    collate_skip,
    read_classes_file,
)
from .mosaics import FASHION_CLASSES, SCENES, FashionMosaics, load_fashion_mnist, read_idx
from .scenes import FashionScenes
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform, denormalize, load_image

DATASETS = ("voc", "coco", "list", "mosaics", "scenes")

# Split names build_dataset accepts, mapped to each dataset's own.
_SPLITS = {
    "voc": {"trainval": "trainval", "train": "trainval", "test": "test", "val": "test"},
    "coco": {"train": "train", "val": "val"},
    "mosaics": {"train": "train", "val": "val", "test": "val"},
    "scenes": {"train": "train", "val": "val", "test": "val"},
}


def build_dataset(name: str, root=None, split: str = "train", image_size: int = 448, train: bool | None = None, **kw):
    """Build a dataset by name: "voc", "coco", "list", "mosaics" or "scenes".

    root: the VOC2007 folder, the COCO folder, the jsonl file ("list"; ``classes_file=``
    fixes the classes and their order, else the labels found, sorted), or the Fashion-MNIST folder ("mosaics",
    "scenes", optional). ``train`` (augmentation on) defaults to ``split`` starting with
    "train". Other keywords go to the dataset's constructor.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if train is None:
        train = split.startswith("train")
    if name in _SPLITS:
        if split not in _SPLITS[name]:
            raise ValueError(f"dataset {name!r} has no split {split!r}; expected one of {list(_SPLITS[name])}")
        split = _SPLITS[name][split]
    if name in ("voc", "coco", "list") and root is None:
        raise ValueError(f"dataset {name!r} needs root= (its folder, or the jsonl file for 'list')")
    if name == "voc":
        return VOCDataset(root, split=split, image_size=image_size, train=train, **kw)
    if name == "coco":
        return COCODataset(root, split=split, image_size=image_size, train=train, **kw)
    if name == "list":
        return ListDataset(root, image_size=image_size, train=train, **kw)
    if name == "scenes":
        return FashionScenes(split=split, image_size=image_size, train=train, root=root, **kw)
    return FashionMosaics(split=split, image_size=image_size, train=train, root=root, **kw)


def data_fingerprint(ds) -> str:
    """sha256 of a data set's content as training sees it: its images' paths and labels, or its targets.

    Equal fingerprints mean the same examples with the same labels (images themselves are not read).
    """
    if hasattr(ds, "fingerprint"):
        return ds.fingerprint()
    import hashlib

    h = hashlib.sha256(repr(list(ds.classes)).encode())
    h.update(ds.targets().to(torch.float32).numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "COCODataset",
    "DATASETS",
    "FASHION_CLASSES",
    "FashionMosaics",
    "FashionScenes",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageListDataset",
    "ListDataset",
    "SCENES",
    "VOCDataset",
    "VOC_CLASSES",
    "build_dataset",
    "build_transform",
    "data_fingerprint",
    "collate_skip",
    "denormalize",
    "load_fashion_mnist",
    "load_image",
    "read_classes_file",
    "read_idx",
]
