"""Datasets, transforms and batching for multi-label image recognition.

Every dataset yields ``(image Tensor[3, S, S], target Tensor[C], ignore Tensor[C] bool)``
or ``None`` for an unreadable image; batch with :func:`collate_skip`.
"""

from __future__ import annotations

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

    root: the VOC2007 folder, the COCO folder, the jsonl file ("list", which
    also needs ``classes_file=``), or the Fashion-MNIST folder ("mosaics",
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
        if "classes_file" not in kw:
            raise ValueError("dataset 'list' needs classes_file= (one class name per line)")
        return ListDataset(root, image_size=image_size, train=train, **kw)
    if name == "scenes":
        return FashionScenes(split=split, image_size=image_size, train=train, root=root, **kw)
    return FashionMosaics(split=split, image_size=image_size, train=train, root=root, **kw)


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
    "collate_skip",
    "denormalize",
    "load_fashion_mnist",
    "load_image",
    "read_classes_file",
    "read_idx",
]
