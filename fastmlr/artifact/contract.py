"""The artefact contract: what every exported file promises and every runner checks.

This module is the one place that defines it; the builders (:mod:`fastmlr.deploy`)
write through it and the runners (:mod:`fastmlr.runtime`) read through it.

- I/O: one input :data:`INPUT_NAME` (float32 ``[N, 3, S, S]``, normalised with the
  sidecar's mean/std) and the outputs :data:`OUTPUT_NAMES` (float32 ``[N, C]``:
  the logits and their fp32 sigmoid), in that order.
- Sidecar: artefact ``X`` has ``X.json`` (:func:`sidecar_path`), a JSON object of
  format :data:`SIDECAR_FORMAT` with the class names, input size, mean/std,
  threshold (and optionally ``thresholds``, one per class), model name and
  config, precision, batch range, library versions and the artefact's file name,
  size and sha256 (``artifact``). The C++ reader in ``export/cpp/src/sidecar.cpp``
  reads the same fields.
- Integrity: the artefact's sha256 covers the model file; the sidecar covers
  itself with ``integrity`` (:func:`seal`): the sha256 of every other top-level
  field's canonical JSON (sorted keys, no spaces, UTF-8). :func:`read_sidecar`
  refuses a sidecar whose fields no longer match it, naming the fields, so a
  hand-edited ``class_names`` or ``mean`` is never used by accident; the
  deliberate bypass is ``verify_hash=False``. Tools that change a sidecar
  rewrite its record: :func:`write_sidecar` (every export) and
  :func:`set_thresholds` (thresholds calibrated after export). Sidecars written
  before the record existed still load, with one line on stderr saying their
  fields are unchecked (re-export to add it). The C++ reader does not check it.
- :data:`EXTENSIONS` maps file extensions to the artefact kind in ``artifact.format``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from typing import Sequence

from ..files import atomic_write_json, file_sha256
from .probe import tensorrt_version

SIDECAR_FORMAT = "fastmlr-artifact-v1"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
EXTENSIONS = {".onnx": "onnx", ".plan": "tensorrt", ".engine": "tensorrt", ".pt2": "aoti"}
# Keys every sidecar has; the rest are informative.
REQUIRED_KEYS = ("class_names", "image_size", "mean", "std", "threshold", "artifact")
# Bigger sidecars are not fastmlr's (as export/cpp/src/sidecar.cpp).
MAX_SIDECAR_BYTES = 16 << 20
INTEGRITY_KEY = "integrity"
INTEGRITY_SCHEME = "sha256 of each top-level field's canonical JSON"
_warned_unsealed: set[str] = set()


class SidecarMismatch(ValueError):
    """The artefact's sidecar is missing, belongs to another file, or does not fit the request."""


def sidecar_path(artifact: str) -> str:
    """The sidecar of ``artifact``: the same path with ``.json`` appended."""
    return os.fspath(artifact) + ".json"


def versions() -> dict:
    """fastmlr, torch, onnx, onnxruntime and TensorRT versions (None for what is not installed)."""
    import torch

    from .. import __version__

    v = {"fastmlr": __version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    v["tensorrt"] = tensorrt_version()
    v["tensorrt_rtx"] = tensorrt_version("rtx")
    return v


def check_thresholds(thresholds, num_classes: int, where: str) -> list[float]:
    """``thresholds`` as a list of ``num_classes`` floats in (0, 1) (a single number is repeated).

    Anything else is a ValueError naming ``where``. The one check of per-class thresholds: the
    sidecar writer and reader, ``set_thresholds`` and the commands all use it.
    """
    if isinstance(thresholds, (int, float)) or type(thresholds).__name__ in ("float32", "float64"):
        thresholds = [float(thresholds)] * num_classes
    try:
        values = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a list of {num_classes} numbers, found {str(thresholds)[:60]}") from None
    if len(values) != num_classes:
        raise ValueError(f"{where}: {len(values)} per-class thresholds for {num_classes} classes")
    bad = [t for t in values if not 0.0 < t < 1.0]
    if bad:
        raise ValueError(f"{where}: per-class thresholds must be in (0, 1), found {bad[:3]}")
    return values


def make_sidecar(model, image_size: int, class_names=None, threshold: float = 0.5, thresholds=None) -> dict:
    """What a runner needs besides the graph: class names, preprocessing, threshold(s), model config, versions.

    ``class_names`` defaults to ``model.class_names`` (set by ``model_from_checkpoint``),
    else ``class_0 ... class_{C-1}``. ``thresholds``: optional, one per class;
    without it ``threshold`` applies to every class. The artefact-specific
    fields (file, sha256, precision, batch range) are added by :func:`write_sidecar`.
    """
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    num_classes = int(getattr(model, "num_classes"))
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    if not names:
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for a model with {num_classes} classes")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    side = {
        "format": SIDECAR_FORMAT,
        "model": getattr(model, "model_name", type(model).__name__),
        "num_classes": num_classes,
        "config": dict(getattr(model, "config", {})),
        "class_names": names,
        "image_size": int(image_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "threshold": float(threshold),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "normalised": True},
        "outputs": {"logits": "float32 [N, C]", "probs": "float32 [N, C], sigmoid(logits)"},
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if thresholds is not None:
        side["thresholds"] = check_thresholds(thresholds, num_classes, "make_sidecar")
    return side


def _field_hash(value) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal(side: dict) -> dict:
    """``side`` with its integrity record (any earlier one replaced): a hash of every other top-level field."""
    body = {k: v for k, v in side.items() if k != INTEGRITY_KEY}
    # A JSON round trip first, so the hashes are those of what a reader will parse back (tuples become lists).
    body = json.loads(json.dumps(body))
    return {**body, INTEGRITY_KEY: {"scheme": INTEGRITY_SCHEME, "fields": {k: _field_hash(v) for k, v in body.items()}}}


def edited_fields(side: dict) -> list[str] | None:
    """Top-level fields that differ from the integrity record (added, removed or changed); None without a record."""
    rec = side.get(INTEGRITY_KEY)
    if rec is None:
        return None
    if not isinstance(rec, dict) or rec.get("scheme") != INTEGRITY_SCHEME or not isinstance(rec.get("fields"), dict):
        return [INTEGRITY_KEY]
    want = rec["fields"]
    have = {k: v for k, v in side.items() if k != INTEGRITY_KEY}
    changed = [k for k in have if want.get(k) != _field_hash(have[k])]
    return sorted(set(changed) | (set(want) - set(have)))


def write_sidecar(artifact_path: str, sidecar: dict, **fields) -> dict:
    """Write the sidecar of ``artifact_path`` (atomically, sealed) with ``fields`` and the artefact's hash; returns it.

    The sidecar gets the umask's usual mode when new (it is read by other users:
    a Triton server, a service account); a replaced one keeps its mode.
    """
    side = {**sidecar, **fields}
    side["artifact"] = {**fields.get("artifact", {}), "file": os.path.basename(artifact_path),
                        "sha256": file_sha256(artifact_path), "bytes": os.path.getsize(artifact_path)}
    side["versions"] = versions()
    side = seal(side)
    atomic_write_json(sidecar_path(artifact_path), side, publish=True)
    return side


def set_thresholds(artifact: str, thresholds=None, *, threshold: float | None = None) -> dict:
    """Change the decision threshold(s) of an exported artefact after calibration, rewriting its sealed sidecar.

    ``thresholds``: one per class (None leaves them as they are); ``threshold``:
    the single threshold. The sidecar must be intact (:func:`read_sidecar`);
    the artefact itself is not touched. Returns the new sidecar.
    """
    side = read_sidecar(artifact)
    if threshold is not None:
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        side["threshold"] = float(threshold)
    if thresholds is not None:
        side["thresholds"] = check_thresholds(thresholds, len(side["class_names"]), "set_thresholds")
    side = seal(side)
    atomic_write_json(sidecar_path(artifact), side, publish=True)
    return side


def read_sidecar(path: str, *, verify_hash: bool = True) -> dict:
    """The sidecar of artefact ``path``; raises :class:`SidecarMismatch` when absent, unreadable, not fastmlr's or edited.

    ``verify_hash=False`` skips the integrity check (an edit made on purpose).
    """
    side_path = sidecar_path(path)
    if not os.path.exists(side_path):
        raise SidecarMismatch(
            f"{path} has no sidecar {side_path}: export it with python -m fastmlr.export, which writes one"
        )
    try:
        if not os.path.isfile(side_path):  # a FIFO would block the reader
            raise OSError(f"{side_path} is not a regular file")
        if os.path.getsize(side_path) > MAX_SIDECAR_BYTES:
            raise OSError(f"{os.path.getsize(side_path)} bytes; a sidecar is a few kB (limit {MAX_SIDECAR_BYTES})")
        with open(side_path) as fh:
            side = json.load(fh)
    except RecursionError:
        raise SidecarMismatch(f"sidecar {side_path} cannot be read: its JSON nests too deep") from None
    except (OSError, ValueError) as e:
        raise SidecarMismatch(f"sidecar {side_path} cannot be read: {e}") from None
    if not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT:
        found = side.get("format") if isinstance(side, dict) else type(side).__name__
        raise SidecarMismatch(f"{side_path} is not a fastmlr sidecar (expected format {SIDECAR_FORMAT!r}, found {found!r})")
    for key in REQUIRED_KEYS:
        if key not in side:
            raise SidecarMismatch(f"sidecar {side_path} lacks {key!r}")
    if "thresholds" in side:
        try:
            check_thresholds(side["thresholds"], len(side["class_names"]), f"sidecar {side_path}")
        except (TypeError, ValueError) as e:
            raise SidecarMismatch(str(e)) from e
    if verify_hash:
        _check_integrity(side_path, side)
    return side


def _check_integrity(side_path: str, side: dict) -> None:
    edited = edited_fields(side)
    if edited is None:
        if side_path not in _warned_unsealed:
            _warned_unsealed.add(side_path)
            print(f"fastmlr: sidecar {side_path} has no {INTEGRITY_KEY!r} record (written by an older fastmlr): "
                  f"its fields are used unchecked; re-export to add one", file=sys.stderr)
        return
    if edited:
        raise SidecarMismatch(
            f"sidecar {side_path} was edited after export: {', '.join(edited)} no longer match its "
            f"{INTEGRITY_KEY!r} record; re-export the artefact (python -m fastmlr.export), change thresholds with "
            f"fastmlr.deploy.set_thresholds, or accept the edit deliberately with verify_hash=False"
        )


def class_thresholds(side: dict) -> list[float]:
    """The decision threshold of every class: ``thresholds`` when the sidecar has it, else ``threshold`` for all."""
    if "thresholds" in side:
        return [float(t) for t in side["thresholds"]]
    return [float(side["threshold"])] * len(side["class_names"])


def check_sidecar(path: str, side: dict, *, kind: str, class_names: Sequence[str] | None = None,
                  image_size: int | None = None, model: str | None = None, precision: str | None = None,
                  verify_hash: bool = True) -> None:
    """Refuse ``side`` when it describes another file or differs from the request; the message lists every difference."""
    diffs = []
    art = side["artifact"]
    if art.get("format") != kind:
        diffs.append(f"format: sidecar says {art.get('format')!r}, the file's extension says {kind!r}")
    if verify_hash and art.get("sha256") and file_sha256(path) != art["sha256"]:
        diffs.append(f"sha256: the sidecar was written for another {art.get('file', 'file')!r} "
                     f"({art['sha256'][:12]}...), not this one (re-export, or copy the sidecar that came with it)")
    if class_names is not None and list(class_names) != list(side["class_names"]):
        have, want = list(side["class_names"]), list(class_names)
        if len(have) != len(want):
            diffs.append(f"classes: {len(have)} in the artefact, {len(want)} requested")
        else:
            i = next(i for i, (a, b) in enumerate(zip(have, want)) if a != b)
            diffs.append(f"classes: class {i} is {have[i]!r} in the artefact and {want[i]!r} requested")
    if image_size is not None and int(image_size) != int(side["image_size"]):
        diffs.append(f"image size: artefact {side['image_size']}, requested {image_size}")
    if model is not None and model != side.get("model"):
        diffs.append(f"model: artefact {side.get('model')!r}, requested {model!r}")
    if precision is not None and precision != side.get("precision"):
        diffs.append(f"precision: artefact {side.get('precision')!r}, requested {precision!r}")
    if diffs:
        raise SidecarMismatch(f"{path} does not match: " + "; ".join(diffs))


__all__ = [
    "SIDECAR_FORMAT", "INPUT_NAME", "OUTPUT_NAMES", "EXTENSIONS", "REQUIRED_KEYS", "SidecarMismatch",
    "sidecar_path", "versions", "make_sidecar", "write_sidecar", "read_sidecar", "check_sidecar", "class_thresholds",
    "INTEGRITY_KEY", "seal", "edited_fields", "set_thresholds",
]
