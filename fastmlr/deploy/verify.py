"""What the artefact checks compare against: PyTorch's probabilities on random and real images, and the bounds.

Every check report is a dict with ``artifact``, ``kind``, ``ok`` and the
numbers (``max_abs_diff`` per image set, ``tolerance``, ...); a check never
raises on a mismatch, it reports it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .graph import export_mode

# Largest |p_artefact - p_torch| over all probabilities.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
# fp16's mAP on the built-in validation set must stay within this many points of fp32's.
FP16_MAP_POINTS = 0.2


def real_images(image_size: int, n: int = 8, paths=None) -> tuple[torch.Tensor | None, str]:
    """Real images for the checks: ``paths`` if given, else the built-in validation mosaics.

    Returns (Tensor[n, 3, S, S] or None, a description or the reason there are none).
    """
    if paths:
        from ..data import load_image

        return torch.stack([load_image(p, image_size)[0] for p in paths]), f"{len(paths)} image file(s)"
    try:
        from ..data import FashionMosaics

        ds = FashionMosaics("val", num_images=n, image_size=image_size, seed=1)
        return torch.stack([ds[i][0] for i in range(n)]), f"{n} validation mosaics"
    except (OSError, FileNotFoundError, ValueError) as e:
        return None, f"no real images ({e}); pass --verify-images"


def max_abs_diff(a, b) -> float:
    """max |a - b| over every element, in float32."""
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


@torch.no_grad()
def torch_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The eager model's probabilities, with the fused ops on the backend the graphs are traced through."""
    with export_mode(model):
        return torch.sigmoid(model(images).float())


def measure_latency(fn, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median time of ``fn(x)`` in milliseconds, after ``warmup`` calls (the bench's timer: wall clock on the
    CPU, CUDA events when ``x`` is on a GPU)."""
    from ..measure import percentile, time_calls

    return 1000 * percentile(time_calls(fn, x, repeats, warmup, x.device), 50)


__all__ = ["TOLERANCE", "FP16_MAP_POINTS", "real_images", "max_abs_diff", "torch_probs", "measure_latency"]
