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


def real_images(image_size: int, n: int = 8, paths=None, model=None) -> tuple[torch.Tensor | None, str]:
    """Real images for the checks and the fp16 search: ``paths`` if given, else the model's own validation data.

    ``model.train_args`` (a checkpoint's recorded flags, set by ``model_from_checkpoint``) says where the
    model's validation images came from: the first ``n`` readable ones of that set are used, whatever
    the data (VOC, COCO, a labels file, or the built-in mosaics of the run's seed). A model with no
    record gets the built-in validation mosaics only when it is a mosaics model (its classes are
    theirs). Returns (Tensor[n, 3, S, S] or None, a line saying which images, or why there are none).
    """
    if paths:
        from ..data import load_image

        return torch.stack([load_image(p, image_size)[0] for p in paths]), f"{len(paths)} image file(s) given"
    run = getattr(model, "train_args", None) if model is not None else None
    names = list(getattr(model, "class_names", None) or [])
    if run and run.get("data"):
        from ..data.splits import run_datasets

        try:
            _, val, where = run_datasets(run, image_size=image_size, train_only_val=True, classes=names or None)
        except (OSError, ValueError) as e:
            return None, (f"no real images: the model's validation data ({run.get('data')} "
                          f"{run.get('data_root') or ''}) cannot be read here ({e}); pass --verify-images")
        items = [it for it in (val[i] for i in range(min(len(val), 4 * n))) if it is not None][:n]
        if not items:
            return None, "no real images: none of the model's validation images can be read; pass --verify-images"
        return torch.stack([it[0] for it in items]), f"{len(items)} images of the model's own {where}"
    from ..data import FASHION_CLASSES, FashionMosaics

    if names and names != list(FASHION_CLASSES):
        return None, "no real images: the model records no training data and is no mosaics model; pass --verify-images"
    try:
        ds = FashionMosaics("val", num_images=n, image_size=image_size, seed=1)
        return torch.stack([ds[i][0] for i in range(n)]), f"{n} built-in validation mosaics (a mosaics model)"
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


def torch_probs64(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The same probabilities computed in float64 (a copy of the model): what fp32 rounding is measured against."""
    import copy

    twin = copy.deepcopy(model).double()
    with export_mode(twin), torch.no_grad():
        return torch.sigmoid(twin(images.double()))


def fp32_against_float64(model: nn.Module, images: torch.Tensor, probs, probs32: torch.Tensor,
                         tolerance: float) -> dict:
    """For an fp32 runtime whose probabilities ``probs`` differ from PyTorch's fp32 ones ``probs32`` by more
    than ``tolerance``: both against the float64 twin of the model on the same images. Returns ``own``
    (PyTorch's fp32 error), ``artefact`` (the runtime's error) and ``bound`` = max(tolerance, 2 own); the
    runtime passes when its error is within the bound. A deep network's rounding compounds, and two fp32
    computations that sum in different orders (oneDNN's packed convolutions, MLAS's) differ from each other
    by up to the sum of their errors, so the runtime is held to the exact result, not to PyTorch's rounding
    (flash-attention's rule for low precision: at most twice the reference implementation's own error)."""
    p64 = torch_probs64(model, images)
    own = max_abs_diff(probs32, p64)
    return {"own": own, "artefact": max_abs_diff(probs, p64), "bound": max(tolerance, 2 * own)}


def within_fp32(rep: dict, name: str) -> bool:
    """Whether a check report's image set ``name`` passes: within the tolerance of PyTorch's probabilities,
    or, past it, within the bound of :func:`fp32_against_float64` (``rep["against_float64"]``)."""
    past = rep.get("against_float64", {}).get(name)
    if past is not None:
        return past["artefact"] <= past["bound"]
    return rep["max_abs_diff"][name] <= rep["tolerance"]


def measure_latency(fn, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median time of ``fn(x)`` in milliseconds, after ``warmup`` calls (the bench's timer: wall clock on the
    CPU, CUDA events when ``x`` is on a GPU)."""
    from ..measure import percentile, time_calls

    return 1000 * percentile(time_calls(fn, x, repeats, warmup, x.device), 50)


__all__ = ["TOLERANCE", "FP16_MAP_POINTS", "real_images", "max_abs_diff", "torch_probs", "torch_probs64",
           "fp32_against_float64", "within_fp32", "measure_latency"]
