"""FashionScenes: a built-in multi-label benchmark where where-and-which matters.

Each image is a ``canvas x canvas`` grey scene (224 px by default, so a
stride-32 backbone ends on a 7 x 7 map) holding 1 to 5 Fashion-MNIST
photos at random positions and scales (40 to 112 px, up to 2.8x apart),
on a textured background with clutter: faint noise and small fragments of
other photos that are not objects. Later objects may partly cover earlier
ones; a placement is kept only if every object already placed keeps at
least ``MIN_VISIBLE`` of its pixels visible and the new one has at most
``MAX_OVERLAP`` of its pixels over earlier objects, so every labelled object
is visible, at least partly. Classes follow the mosaics' scene prior
(:data:`fastmlr.data.mosaics.SCENES`), so labels co-occur.

Scene ``i`` of a split is a pure function of ``(seed, split, i)``, the
same in every process; rendering is a few small matmuls and array writes
(a few thousand scenes a second on one core before the transform).
"""

from __future__ import annotations

import bisect
import os
import random
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .mosaics import (
    _SCENE_CDF,
    _SPLIT_FILES,
    _SPLIT_IDS,
    CELL,
    FASHION_CLASSES,
    OFF_SCENE_P,
    SCENES,
    _shrink_matrix,
    fmnist_dir,
    photos_by_class,
)
from .transforms import build_grey_transform

CANVAS = 224
MAX_OBJECTS = 5
# Object sides in pixels at a 224 canvas (scaled with the canvas).
MIN_SIDE, MAX_SIDE = 40, 112
# A photo pixel belongs to its object above this grey level (Fashion-MNIST backgrounds are 0).
MASK_LEVEL = 16
# Every placed object keeps at least this fraction of its pixels visible; a new object may put at
# most MAX_OVERLAP of its own pixels over earlier ones.
MIN_VISIBLE, MAX_OVERLAP = 0.5, 0.3
PLACEMENT_TRIES = 12
# Clutter: fragments (a random crop of a random photo, 6-12 px of the 28, drawn at 12-36 px and at
# 30-55% intensity) under the objects, and background noise of this amplitude.
MAX_FRAGMENTS, NOISE_LEVEL = 6, 18


class FashionScenes(Dataset):
    """Cluttered scenes of Fashion-MNIST photos at varied positions and scales.

    Items: (image Tensor[3, S, S] normalised, target Tensor[10] float32, ignore Tensor[10] bool
    all False), like :class:`~fastmlr.data.mosaics.FashionMosaics`; ``split="train"`` draws
    photos from the Fashion-MNIST train files, ``"val"`` from t10k.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 2000,
        image_size: int = 224,
        train: bool = False,
        seed: int = 0,
        root: str | os.PathLike | None = None,
        canvas: int = CANVAS,
        transform: Callable | None = None,
    ):
        if split not in _SPLIT_FILES:
            raise ValueError(f"FashionScenes split must be one of {list(_SPLIT_FILES)}, found {split!r}")
        if not 0 <= num_images < 2**32:
            raise ValueError(f"num_images must be in [0, 2**32), found {num_images}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, found {seed}")
        if canvas < 64:
            raise ValueError(f"canvas must be >= 64 pixels, found {canvas}")
        self.split, self.num_images, self.image_size = split, int(num_images), int(image_size)
        self.train, self.seed, self.canvas = bool(train), int(seed), int(canvas)
        self.root = fmnist_dir(root)
        self.classes = list(FASHION_CLASSES)
        self.transform = transform if transform is not None else build_grey_transform(image_size, train)
        self._grey_transform = transform is None
        self._photos, self._by_class = photos_by_class(self.root, split)
        k = self.canvas / CANVAS
        self._sides = (max(8, round(MIN_SIDE * k)), max(9, round(MAX_SIDE * k)))

    def __len__(self) -> int:
        return self.num_images

    def _rng(self, i: int) -> random.Random:
        if not 0 <= i < self.num_images:
            raise IndexError(f"scene index {i} out of range for {self.num_images} images")
        return random.Random((self.seed << 34) | (_SPLIT_IDS[self.split] << 32) | i)

    def _mask(self, photo: int, side: int) -> np.ndarray:
        return self._scaled(photo, side) > MASK_LEVEL

    def _scaled(self, photo: int, side: int) -> np.ndarray:
        w = _shrink_matrix(side)
        return np.clip(w @ self._photos[photo].astype(np.float32) @ w.T + 0.5, 0, 255).astype(np.uint8)

    def _layout(self, i: int) -> dict:
        """The placement record of scene ``i``: a pure function of (seed, split, i).

        Returns {"scene", "noise_seed", "fragments": [{"photo", "crop": (y, x, h), "side", "top", "left",
        "gain"}], "objects": [{"class", "photo", "side", "top", "left"}, ...]} in drawing order.
        """
        rng = self._rng(i)
        scene = rng.randrange(len(SCENES))
        S, (lo, hi) = self.canvas, self._sides
        fragments = []
        for _ in range(rng.randint(0, MAX_FRAGMENTS)):
            h = rng.randint(6, 12)
            side = rng.randint(12, 36)
            fragments.append({
                "photo": rng.randrange(self._photos.shape[0]),
                "crop": (rng.randint(0, CELL - h), rng.randint(0, CELL - h), h),
                "side": side, "top": rng.randint(0, S - side), "left": rng.randint(0, S - side),
                "gain": rng.uniform(0.3, 0.55),
            })
        objects: list[dict] = []
        owner = np.full((S, S), -1, dtype=np.int16)  # which object shows at each pixel
        sizes: list[int] = []
        for _ in range(rng.randint(1, MAX_OBJECTS)):
            if rng.random() < OFF_SCENE_P:
                cls = rng.randrange(len(self.classes))
            else:
                cls = min(bisect.bisect_right(_SCENE_CDF[scene], rng.random()), len(self.classes) - 1)
            pool = self._by_class[cls]
            photo = int(pool[rng.randrange(pool.size)])
            for _ in range(PLACEMENT_TRIES):
                side = rng.randint(lo, hi)
                top, left = rng.randint(0, S - side), rng.randint(0, S - side)
                mask = self._mask(photo, side)
                region = owner[top : top + side, left : left + side]
                covered = region[mask]
                if mask.sum() == 0 or (covered >= 0).mean() > MAX_OVERLAP:
                    continue
                lost = np.bincount(covered[covered >= 0], minlength=len(objects))
                visible = [np.count_nonzero(owner == j) - lost[j] for j in range(len(objects))]
                if any(v < MIN_VISIBLE * n for v, n in zip(visible, sizes)):
                    continue
                region[mask] = len(objects)
                objects.append({"class": cls, "photo": photo, "side": side, "top": top, "left": left})
                sizes.append(int(mask.sum()))
                break
        return {"scene": list(SCENES)[scene], "noise_seed": rng.getrandbits(32), "fragments": fragments,
                "objects": objects}

    def _target(self, layout: dict) -> torch.Tensor:
        target = torch.zeros(len(self.classes))
        for obj in layout["objects"]:
            target[obj["class"]] = 1.0
        return target

    def render(self, i: int) -> np.ndarray:
        """The grey canvas of scene ``i``, uint8 [canvas, canvas], before any transform."""
        return self._render(self._layout(i))[0]

    def visible_fractions(self, i: int) -> list[float]:
        """Per object of scene ``i`` (drawing order): the fraction of its pixels left visible."""
        _, owner, sizes = self._render(self._layout(i))
        return [np.count_nonzero(owner == j) / n for j, n in enumerate(sizes)]

    def _render(self, layout: dict) -> tuple[np.ndarray, np.ndarray, list[int]]:
        S = self.canvas
        noise = np.random.default_rng(layout["noise_seed"]).integers(0, NOISE_LEVEL, size=(S // 4, S // 4), dtype=np.uint8)
        canvas = np.repeat(np.repeat(noise, 4, axis=0), 4, axis=1)
        if canvas.shape[0] != S:
            canvas = np.pad(canvas, ((0, S - canvas.shape[0]), (0, S - canvas.shape[1])))
        for fr in layout["fragments"]:
            y, x, h = fr["crop"]
            crop = self._photos[fr["photo"], y : y + h, x : x + h].astype(np.float32)
            side = fr["side"]
            ry = np.minimum((np.arange(side) * h) // side, h - 1)
            patch = (crop[ry][:, ry] * fr["gain"]).astype(np.uint8)
            view = canvas[fr["top"] : fr["top"] + side, fr["left"] : fr["left"] + side]
            np.maximum(view, patch, out=view)
        owner = np.full((S, S), -1, dtype=np.int16)
        sizes = []
        for j, obj in enumerate(layout["objects"]):
            side, top, left = obj["side"], obj["top"], obj["left"]
            photo = self._scaled(obj["photo"], side)
            mask = photo > MASK_LEVEL
            canvas[top : top + side, left : left + side][mask] = photo[mask]
            owner[top : top + side, left : left + side][mask] = j
            sizes.append(int(mask.sum()))
        return canvas, owner, sizes

    def __getitem__(self, i: int):
        layout = self._layout(i)
        img = Image.fromarray(self._render(layout)[0])
        if not self._grey_transform:
            img = img.convert("RGB")
        return self.transform(img), self._target(layout), torch.zeros(len(self.classes), dtype=torch.bool)

    def targets(self) -> torch.Tensor:
        """All targets, Tensor[N, 10] float32 (from the layouts; nothing is drawn)."""
        if self.num_images == 0:
            return torch.zeros(0, len(self.classes))
        return torch.stack([self._target(self._layout(i)) for i in range(self.num_images)])
