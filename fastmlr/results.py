"""A prediction as people and programs read it: thresholds to labels, and the one JSON Lines record.

``predict --json``, the Python runtime (``Runner.records``) and the C++ program (``--json`` and
``--serve``, export/cpp/src/main.cpp) write the same record, one JSON object a line
(documented in export/README.md, "Prediction output")::

    {"image": "a.jpg", "labels": ["person", "car"],
     "probabilities": {"aeroplane": 0.0123, ...}, "thresholds": {"aeroplane": 0.5, ...}}

``labels``: the classes whose probability is at or above their threshold, highest first (ties in
class order); ``probabilities``: every class, in class order, unrounded; ``thresholds``: the one
each class was decided with. A non-finite probability is written ``null`` and gives no label.
An image that could not be read gives ``{"image": ..., "error": "..."}``.
"""

from __future__ import annotations

import json
import math
from typing import Sequence


def labels_at(probs: Sequence[float], thresholds: Sequence[float], class_names: Sequence[str]) -> list[tuple[str, float]]:
    """(class name, probability) of every class at or above its threshold, highest first, ties in class order."""
    p = [float(v) for v in probs]
    if not len(p) == len(thresholds) == len(class_names):
        raise ValueError(f"{len(p)} probabilities, {len(thresholds)} thresholds and {len(class_names)} class names; "
                         f"expected one of each per class")
    order = sorted(range(len(p)), key=lambda c: -p[c] if math.isfinite(p[c]) else math.inf)
    return [(class_names[c], p[c]) for c in order if math.isfinite(p[c]) and p[c] >= float(thresholds[c])]


def _num(v: float):
    v = float(v)
    return v if math.isfinite(v) else None


def prediction_record(image: str, probs: Sequence[float], thresholds: Sequence[float],
                      class_names: Sequence[str]) -> dict:
    """The JSON Lines record of one image (see the module docstring)."""
    return {
        "image": str(image),
        "labels": [name for name, _ in labels_at(probs, thresholds, class_names)],
        "probabilities": {n: _num(v) for n, v in zip(class_names, probs)},
        "thresholds": {n: float(t) for n, t in zip(class_names, thresholds)},
    }


def error_record(image: str, message: str) -> dict:
    return {"image": str(image), "error": str(message)}


def dumps(record: dict) -> str:
    """One line of JSON (no NaN or Infinity: those are ``null`` already)."""
    return json.dumps(record, allow_nan=False)


__all__ = ["dumps", "error_record", "labels_at", "prediction_record"]
