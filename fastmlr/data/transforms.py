"""Image transforms shared by every dataset, prediction and drawing.

The training recipe is SRDL section 4.2 generalised to any input size: at
448 px the paper resizes to 512, crops a random square of side 512, 448,
384, 320 or 256, resizes the crop to 448 and flips at random. Here the
first resize is ``round(S * 8/7)`` and the crop sides are ``S * scale`` for
``scale`` in ``scales``, which reproduces those numbers at ``S = 448``.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_SCALES = (8 / 7, 1.0, 6 / 7, 5 / 7, 4 / 7)


class RandomSquareCrop:
    """Crop a square whose side is drawn uniformly from ``sides``, at a random place.

    Uses torch's generator so that DataLoader workers, which torch seeds
    differently, draw different crops.
    """

    def __init__(self, sides: Sequence[int]):
        if not sides or any(int(s) < 1 for s in sides):
            raise ValueError(f"crop sides must be positive integers, found {list(sides)}")
        self.sides = tuple(int(s) for s in sides)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        side = self.sides[int(torch.randint(len(self.sides), ()))]
        side = min(side, w, h)
        top = int(torch.randint(h - side + 1, ()))
        left = int(torch.randint(w - side + 1, ()))
        return img.crop((left, top, left + side, top + side))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sides={self.sides})"


def geometric_transforms(image_size: int, train: bool, scales: Sequence[float] = DEFAULT_SCALES) -> list:
    """The PIL-to-PIL part of :func:`build_transform` (resize, crop, flip), for any PIL mode."""
    image_size = int(image_size)
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, found {image_size}")
    if not train:
        return [T.Resize((image_size, image_size))]
    big = round(image_size * 8 / 7)
    scales = tuple(scales)
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, found {scales}")
    sides = [min(max(1, round(image_size * s)), big) for s in scales]
    return [
        T.Resize((big, big)),
        RandomSquareCrop(sides),
        T.Resize((image_size, image_size)),
        T.RandomHorizontalFlip(),
    ]


def build_transform(image_size: int, train: bool, scales: Sequence[float] = DEFAULT_SCALES):
    """PIL image -> Tensor[3, image_size, image_size] float32, ImageNet-normalised.

    train: resize to ``round(image_size * 8/7)`` square, random square crop of
    side ``round(image_size * s)`` for ``s`` drawn from ``scales`` (clamped to
    the resized side), resize to ``image_size``, random horizontal flip.
    eval: resize to ``image_size`` square.
    """
    return T.Compose(
        [*geometric_transforms(image_size, train, scales), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


class GreyToNormalised:
    """Grey PIL image [H, W] -> Tensor[3, H, W], copied to 3 channels then ImageNet-normalised.

    Equals ``Normalize(ToTensor(img.convert("RGB")))`` at a third of the cost,
    because every step before it ran on one channel instead of three.
    """

    def __init__(self):
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "L":
            raise ValueError(f"GreyToNormalised expects a mode 'L' image, found mode {img.mode!r}")
        grey = torch.from_numpy(np.array(img, dtype=np.float32)).div_(255)
        return (grey.expand(3, -1, -1) - self.mean) / self.std


def build_grey_transform(image_size: int, train: bool, scales: Sequence[float] = DEFAULT_SCALES):
    """Grey PIL image -> the same tensor :func:`build_transform` gives for its RGB copy, faster."""
    return T.Compose([*geometric_transforms(image_size, train, scales), GreyToNormalised()])


# PIL modes of 16-bit single-channel images (16-bit grey PNGs open as "I;16" or, widened, "I").
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grey image scaled (not clipped, as PIL's ``convert`` does) to 8-bit "L": v -> round(v / 257).

    Mode "I" (32-bit) is read as 16-bit when its values fit, as for PNGs; wider values are
    scaled by their own maximum.
    """
    a = np.asarray(img).astype(np.float64)
    top = 65535.0 if a.size == 0 or (a.min() >= 0 and a.max() <= 65535) else max(float(a.max()), 1.0)
    return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8))


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; raises OSError/ValueError on a bad file.

    The EXIF orientation is applied (a phone photo is seen upright, as the C++
    service sees it), 16-bit grey images are scaled to 8 bits (:func:`to_8bit`)
    before the RGB copy, and alpha is dropped without compositing.
    """
    check_regular_file(path)
    with Image.open(path) as img:
        # load() forces the decode here, so a truncated file fails now and not inside the transform.
        img.load()
        return to_rgb(img)


def check_regular_file(path: str | os.PathLike) -> None:
    """Raise OSError naming ``path`` unless it is a regular file: reading a FIFO or a device would block or never end."""
    st = os.stat(path)  # FileNotFoundError names the path
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise OSError(errno.EINVAL, f"{kind}; expected an image file", os.fspath(path))


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened image as :func:`open_rgb` makes it: EXIF orientation applied, 16-bit grey scaled, RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_MODES:
        return to_8bit(img).convert("RGB")
    return img.convert("RGB")


# Errors PIL raises on unreadable, truncated or malformed files.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image(path: str | os.PathLike, image_size: int) -> tuple[torch.Tensor, Image.Image]:
    """Read one image for prediction.

    Returns (Tensor[3, image_size, image_size] normalised, the RGB PIL image at
    its own size). Raises ValueError naming ``path`` when it cannot be read.
    """
    try:
        img = open_rgb(path)
    except IMAGE_ERRORS as e:
        raise ValueError(f"cannot read image {os.fspath(path)!r}: {type(e).__name__}: {e}") from e
    return build_transform(image_size, train=False)(img), img


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: Tensor[..., 3, H, W] -> same shape, values in [0, 1]."""
    if t.dim() < 3 or t.shape[-3] != 3:
        raise ValueError(f"denormalize expects Tensor[..., 3, H, W], found shape {tuple(t.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=t.dtype, device=t.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return (t * std + mean).clamp(0, 1)
