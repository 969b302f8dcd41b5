"""Attention-map figures (SRDL paper fig. 5) a reader can take in without the code.

One row per image: the photo at its own aspect, titled with its file name, then its top-k
classes' spatial attention over it. Every map of the figure shares one colour scale, drawn
as a colour bar with its values, so two maps can be compared; each panel's title gives the
class's probability against its threshold and whether it is a label ("person 0.83 >= 0.50").
The model sees the photo resized to a square, so its S x S map covers the whole photo and is
stretched back to the photo's aspect.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def heat(v: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] (Tensor[H, W]) -> RGB (Tensor[3, H, W]) on a blue-green-yellow-red ramp."""
    r = (1.5 - (4 * v - 3).abs()).clamp(0, 1)
    g = (1.5 - (4 * v - 2).abs()).clamp(0, 1)
    b = (1.5 - (4 * v - 1).abs()).clamp(0, 1)
    return torch.stack([r, g, b])


def _fit(w: int, h: int, tile: int) -> tuple[int, int]:
    """(width, height) of a w x h picture scaled to fit a tile x tile box, aspect kept."""
    s = tile / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray((t.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())


def _colour_bar(draw: ImageDraw.ImageDraw, canvas: Image.Image, x: int, y: int, h: int, lo: float, hi: float) -> None:
    ramp = torch.linspace(1, 0, h)[:, None].expand(h, 14)
    canvas.paste(_to_pil(heat(ramp)), (x, y))
    for frac in (0.0, 0.5, 1.0):
        ty = y + round((1 - frac) * (h - 1))
        draw.line([(x + 14, ty), (x + 18, ty)], fill="black")
        draw.text((x + 20, max(y, ty - 6)), f"{lo + frac * (hi - lo):.3g}", fill="black")
    draw.text((x, y + h + 4), "attention", fill="black")


def draw_attention(photos: list[Image.Image], names: list[str], maps: torch.Tensor, probs: torch.Tensor,
                   thresholds, class_names, k: int = 3, tile: int = 192) -> Image.Image:
    """The figure: ``photos`` (RGB PIL images, any size), ``names`` (their file names), ``maps``
    (Tensor[N, C, h, w], the model's spatial attention), ``probs`` (Tensor[N, C]), ``thresholds`` (C)."""
    N, k = len(photos), min(k, probs.shape[1])
    tops = [probs[n].topk(k).indices.tolist() for n in range(N)]
    shown = torch.stack([maps[n, c].float() for n in range(N) for c in tops[n]])
    lo, hi = float(shown.min()), float(shown.max())
    span = max(hi - lo, 1e-12)
    pad, bar_w = 30, 70
    canvas = Image.new("RGB", ((k + 1) * (tile + 6) + bar_w, N * (tile + pad) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    for n, (photo, name) in enumerate(zip(photos, names)):
        w, h = _fit(*photo.size, tile)
        img = torch.from_numpy(np.array(photo.convert("RGB").resize((w, h), Image.BILINEAR)))
        img = img.permute(2, 0, 1).float() / 255
        y = n * (tile + pad)
        canvas.paste(_to_pil(img), (0, y + pad))
        draw.text((2, y + 4), os.path.basename(name)[:36], fill="black")
        for j, c in enumerate(tops[n]):
            m = F.interpolate(maps[n, c][None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            blend = 0.5 * img + 0.5 * heat(((m - lo) / span).clamp(0, 1))
            x = (j + 1) * (tile + 6)
            canvas.paste(_to_pil(blend), (x, y + pad))
            p, t = float(probs[n, c]), float(thresholds[c])
            verdict = f">= {t:.2f} label" if p >= t else f"< {t:.2f}"
            draw.text((x + 2, y + 4), f"{class_names[c]} {p:.2f} {verdict}"[:40], fill="black" if p >= t else "gray")
    _colour_bar(draw, canvas, (k + 1) * (tile + 6) + 6, pad, min(tile, canvas.height - pad - 20), lo, hi)
    return canvas


def draw_attention_tensors(images: torch.Tensor, maps: torch.Tensor, probs: torch.Tensor, class_names,
                           names=None, thresholds=None, k: int = 3) -> Image.Image:
    """The same figure from normalised model inputs (Tensor[N, 3, S, S]), e.g. built-in mosaics (threshold 0.5)."""
    from .data import denormalize

    photos = [_to_pil(denormalize(images[n].float().cpu())) for n in range(images.shape[0])]
    names = names or [f"image {n + 1}" for n in range(len(photos))]
    thresholds = [0.5] * probs.shape[1] if thresholds is None else thresholds
    return draw_attention(photos, names, maps.cpu(), probs.cpu(), thresholds, class_names, k=k)


__all__ = ["draw_attention", "draw_attention_tensors", "heat"]
