"""File-backed multi-label datasets: Pascal VOC 2007, MS-COCO, and JSON Lines lists.

Every dataset returns ``(image, target, ignore)`` per item:
image Tensor[3, S, S] float32 (ImageNet-normalised), target Tensor[C] float32
in {0, 1}, ignore Tensor[C] bool (labels the loss and metrics must skip),
or ``None`` when the image file cannot be read. :func:`collate_skip` drops
those ``None`` items when batching.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import xml.etree.ElementTree as ET
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .transforms import IMAGE_ERRORS, build_transform, open_rgb

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def collate_skip(batch: Sequence[Item | None]):
    """Batch dataset items, dropping the ``None`` ones (unreadable images).

    Returns (images Tensor[B, 3, S, S], targets Tensor[B, C], ignore Tensor[B, C] bool,
    n_skipped int), where B counts the readable items; returns ``None`` when
    every item of the batch was unreadable, so a training loop should skip it.
    """
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    images, targets, ignore = zip(*kept)
    return torch.stack(images), torch.stack(targets), torch.stack(ignore), len(batch) - len(kept)


class ImageListDataset(Dataset):
    """A list of (image path, target Tensor[C], ignore Tensor[C]) read with PIL.

    Subclasses fill ``classes`` and ``_items``; this class reads, transforms,
    and turns unreadable files into ``None`` with one warning per file.
    """

    classes: list[str]

    def __init__(self, image_size: int, train: bool, transform: Callable | None):
        self.image_size = int(image_size)
        self.train = bool(train)
        self.transform = transform if transform is not None else build_transform(image_size, train)
        self._items: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def image_path(self, i: int) -> str:
        return self._items[i][0]

    def targets(self) -> torch.Tensor:
        """All targets, Tensor[N, C] float32 (no image is read)."""
        if not self._items:
            return torch.zeros(0, len(self.classes))
        return torch.stack([t for _, t, _ in self._items])

    def __getitem__(self, i: int) -> Item | None:
        path, target, ignore = self._items[i]
        try:
            img = open_rgb(path)
        except IMAGE_ERRORS as e:
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"skipping unreadable image {path!r} ({type(e).__name__}: {e})", stacklevel=2)
            return None
        return self.transform(img), target.clone(), ignore.clone()

    def subset(self, indices) -> "ImageListDataset":
        """Keep only the items at ``indices`` (in that order); returns self."""
        self._items = [self._items[i] for i in indices]
        return self

    def fingerprint(self) -> str:
        """sha256 of what the set holds: image paths (relative to their common folder), targets, ignores.

        Reads no image; the same files and labels give the same value wherever the folder lies.
        """
        h = hashlib.sha256(json.dumps(self.classes).encode())
        paths = [p for p, _, _ in self._items]
        base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
        for path, target, ignore in self._items:
            h.update(os.path.relpath(os.path.abspath(path), base).encode() + b"\0")
            h.update(target.numpy().tobytes() + ignore.numpy().tobytes())
        return h.hexdigest()

    def _encode(self, positives, ignored=()) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._class_index
        target = torch.zeros(len(self.classes))
        ignore = torch.zeros(len(self.classes), dtype=torch.bool)
        for name in ignored:
            ignore[index[name]] = True
        for name in positives:
            target[index[name]] = 1.0
            ignore[index[name]] = False
        return target, ignore

    @property
    def _class_index(self) -> dict[str, int]:
        return {c: k for k, c in enumerate(self.classes)}


class VOCDataset(ImageListDataset):
    """Pascal VOC 2007 in its standard layout under ``root``.

    root/ImageSets/Main/{split}.txt lists image ids (first token per line);
    root/Annotations/{id}.xml gives the objects; root/JPEGImages/{id}.jpg the
    image. A class present only through ``<difficult>1</difficult>`` objects is
    marked in ``ignore``; a class with any non-difficult object is a positive.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "trainval",
        image_size: int = 448,
        train: bool = False,
        transform: Callable | None = None,
    ):
        super().__init__(image_size, train, transform)
        self.root = os.fspath(root)
        self.split = split
        self.classes = list(VOC_CLASSES)
        split_file = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(
                f"VOC split file {split_file!r} not found; expected root/ImageSets/Main/{split}.txt "
                f"under the VOC2007 folder (root={self.root!r})"
            )
        with open(split_file) as f:
            lines = f.read().splitlines()
        for lineno, line in enumerate(lines, 1):
            tokens = line.split()
            if not tokens:
                continue
            image_id = tokens[0]
            xml_path = os.path.join(self.root, "Annotations", f"{image_id}.xml")
            if not os.path.isfile(xml_path):
                raise FileNotFoundError(
                    f"annotation file {xml_path!r} for image id {image_id!r} "
                    f"(listed at {split_file}:{lineno}) does not exist"
                )
            positives, difficult = self._parse_xml(xml_path)
            target, ignore = self._encode(positives, difficult)
            self._items.append((os.path.join(self.root, "JPEGImages", f"{image_id}.jpg"), target, ignore))
        if not self._items:
            raise ValueError(f"VOC split file {split_file!r} lists no image ids")

    def _parse_xml(self, xml_path: str) -> tuple[set[str], set[str]]:
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as e:
            raise ValueError(f"malformed VOC annotation {xml_path!r}: {e}") from e
        positives, difficult = set(), set()
        known = set(self.classes)
        for k, obj in enumerate(tree.getroot().iter("object"), 1):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise ValueError(f"VOC annotation {xml_path!r}: object {k} has no <name>; expected one of {self.classes}")
            if name not in known:
                raise ValueError(
                    f"unknown class name {name!r} in VOC annotation {xml_path!r}; expected one of {self.classes}"
                )
            if (obj.findtext("difficult") or "0").strip() == "1":
                difficult.add(name)
            else:
                positives.add(name)
        return positives, difficult


class COCODataset(ImageListDataset):
    """MS-COCO instances annotations as multi-label targets.

    Reads root/annotations/instances_{split}{year}.json and images from
    root/{split}{year}/. Classes are the json's categories sorted by id (80 in
    COCO 2014/2017); images without annotations get an all-zero target. A file
    without an ``annotations`` list (COCO's unlabelled test-set files) is refused:
    every target would be zero.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 448,
        train: bool = False,
        transform: Callable | None = None,
        year: int = 2014,
    ):
        super().__init__(image_size, train, transform)
        self.root = os.fspath(root)
        self.split = split
        ann_path = os.path.join(self.root, "annotations", f"instances_{split}{year}.json")
        if not os.path.isfile(ann_path):
            raise FileNotFoundError(
                f"COCO annotation file {ann_path!r} not found; expected root/annotations/instances_{split}{year}.json"
            )
        try:
            with open(ann_path) as f:
                data = json.load(f)
            categories = sorted(data["categories"], key=lambda c: c["id"])
            images = sorted(data["images"], key=lambda im: im["id"])
        except RecursionError:
            raise ValueError(f"malformed COCO annotation file {ann_path!r}: its JSON nests too deep") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"malformed COCO annotation file {ann_path!r}: {type(e).__name__}: {e}") from None
        annotations = data.get("annotations")
        if not isinstance(annotations, list):
            raise ValueError(
                f"COCO annotation file {ann_path!r} has no 'annotations' list (an unlabelled image-info file?); "
                f"every target would be zero"
            )
        if not images:
            raise ValueError(f"COCO annotation file {ann_path!r} lists no images")
        self.classes = [c["name"] for c in categories]
        self.category_ids = [c["id"] for c in categories]
        col = {cid: k for k, cid in enumerate(self.category_ids)}
        labels: dict[int, set[int]] = {im["id"]: set() for im in images}
        for ann in annotations:
            if not isinstance(ann, dict) or "category_id" not in ann or "image_id" not in ann:
                raise ValueError(f"annotation {ann!r:.80} in {ann_path!r} lacks 'category_id' or 'image_id'")
            if ann["category_id"] not in col:
                raise ValueError(
                    f"annotation {ann.get('id')} in {ann_path!r} has category_id {ann['category_id']}, "
                    f"which is not among the file's categories"
                )
            if ann["image_id"] not in labels:
                raise ValueError(
                    f"annotation {ann.get('id')} in {ann_path!r} refers to image_id {ann['image_id']}, "
                    f"which is not among the file's images"
                )
            labels[ann["image_id"]].add(col[ann["category_id"]])
        image_dir = os.path.join(self.root, f"{split}{year}")
        for im in images:
            if not isinstance(im.get("file_name"), str):
                raise ValueError(f"image {im.get('id')} in {ann_path!r} has no 'file_name' string")
            target = torch.zeros(len(self.classes))
            target[sorted(labels[im["id"]])] = 1.0
            ignore = torch.zeros(len(self.classes), dtype=torch.bool)
            self._items.append((os.path.join(image_dir, im["file_name"]), target, ignore))


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines skipped); duplicates are an error naming the line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class-name file {path!r} not found")
    classes: list[str] = []
    seen: dict[str, int] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            name = line.strip()
            if not name:
                continue
            if name in seen:
                raise ValueError(f"{path}:{lineno}: class {name!r} repeats the one at line {seen[name]}")
            seen[name] = lineno
            classes.append(name)
    if not classes:
        raise ValueError(f"class-name file {path!r} lists no classes")
    return classes


class ListDataset(ImageListDataset):
    """A JSON Lines file of ``{"image": path, "labels": [names]}``, and optionally a class-name file.

    Image paths are relative to the jsonl file's folder, or to ``root`` when
    given. An optional ``"ignore": [names]`` field marks labels as unknown.
    The classes are ``classes``, or the class-name file's, in its order; without either, every
    name the file's ``labels`` and ``ignore`` fields use, sorted. Bad JSON, a
    missing field or an unknown label raises ValueError naming the file and line.
    """

    def __init__(
        self,
        jsonl: str | os.PathLike,
        classes_file: str | os.PathLike | None = None,
        image_size: int = 448,
        train: bool = False,
        transform: Callable | None = None,
        root: str | os.PathLike | None = None,
        classes: Sequence[str] | None = None,
    ):
        super().__init__(image_size, train, transform)
        jsonl = os.fspath(jsonl)
        if not os.path.isfile(jsonl):
            raise FileNotFoundError(f"label list {jsonl!r} not found")
        base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(jsonl))
        records = list(self._read(jsonl))
        if classes_file is not None or classes is not None:
            self.classes = list(classes) if classes is not None else read_classes_file(classes_file)
            origin = repr(os.fspath(classes_file)) if classes is None else "the training labels"
            known = set(self.classes)
            for where, rec in records:
                for field in ("labels", "ignore"):
                    unknown = [v for v in rec[field] if v not in known]
                    if unknown:
                        raise ValueError(
                            f"{where}: unknown label(s) {unknown} in {field!r}; classes come from {origin}"
                        )
        else:
            self.classes = sorted({v for _, rec in records for field in ("labels", "ignore") for v in rec[field]})
            if not self.classes and records:
                raise ValueError(f"label list {jsonl!r} names no label at all; expected \"labels\": [names] on its lines")
        for _, rec in records:
            target, ignore = self._encode(rec["labels"], rec["ignore"])
            self._items.append((os.path.join(base, rec["image"]), target, ignore))
        if not self._items:
            raise ValueError(f"label list {jsonl!r} holds no entries; expected one JSON object a line")

    @staticmethod
    def _read(jsonl: str):
        """(``file:line``, {"image", "labels", "ignore"}) for each non-blank line, checked."""
        with open(jsonl) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{jsonl}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
                except RecursionError:
                    raise ValueError(f"{where}: its JSON nests too deep") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
                    raise ValueError(f'{where}: expected an object with a string "image" field, found {line.strip()!r}')
                out = {"image": rec["image"]}
                for field in ("labels", "ignore"):
                    value = rec.get(field, [])
                    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                        raise ValueError(f'{where}: "{field}" must be a list of class names, found {value!r}')
                    out[field] = value
                yield where, out
