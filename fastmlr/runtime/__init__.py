"""Runners for exported fastmlr models: one interface over ONNX Runtime, TensorRT and AOTInductor.

``load(path)`` picks the runner from the file's extension (``.onnx``,
``.plan``/``.engine``, ``.pt2``) and reads the artefact's sidecar
(``path.json``, written by :mod:`fastmlr.export`); the sidecar gives the
class names, the input size, the normalisation and the threshold, so a
runner takes images as they come::

    runner = fastmlr.runtime.load("model.onnx")
    probs = runner.predict([PIL.Image.open("a.jpg")])      # Tensor[1, C], cpu float32
    runner.class_names, runner.provider

A runner refuses an artefact whose sidecar does not fit it (another file's
hash, another format) or the request (``class_names=``, ``image_size=``,
``model=``, ``precision=``), saying what differs. Building engines lives in
:mod:`fastmlr.export_trt`, not here.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch
from torch import Tensor

SIDECAR_FORMAT = "fastmlr-artifact-v1"
EXTENSIONS = {".onnx": "onnx", ".plan": "tensorrt", ".engine": "tensorrt", ".pt2": "aoti"}


class SidecarMismatch(ValueError):
    """The artefact's sidecar is missing, belongs to another file, or does not fit the request."""


def read_sidecar(path: str) -> dict:
    """The sidecar of artefact ``path`` (``path.json``); raises :class:`SidecarMismatch` when absent or foreign."""
    side_path = os.fspath(path) + ".json"
    if not os.path.exists(side_path):
        raise SidecarMismatch(
            f"{path} has no sidecar {side_path}: export it with python -m fastmlr.export, which writes one"
        )
    try:
        with open(side_path) as fh:
            side = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise SidecarMismatch(f"sidecar {side_path} cannot be read: {e}") from e
    if not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT:
        found = side.get("format") if isinstance(side, dict) else type(side).__name__
        raise SidecarMismatch(f"{side_path} is not a fastmlr sidecar (expected format {SIDECAR_FORMAT!r}, found {found!r})")
    for key in ("class_names", "image_size", "mean", "std", "threshold", "artifact"):
        if key not in side:
            raise SidecarMismatch(f"sidecar {side_path} lacks {key!r}")
    return side


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sidecar(path: str, side: dict, *, kind: str, class_names: Sequence[str] | None = None,
                  image_size: int | None = None, model: str | None = None, precision: str | None = None,
                  verify_hash: bool = True) -> None:
    """Refuse ``side`` when it describes another file or differs from the request; the message lists every difference."""
    diffs = []
    art = side["artifact"]
    if art.get("format") != kind:
        diffs.append(f"format: sidecar says {art.get('format')!r}, the file's extension says {kind!r}")
    if verify_hash and art.get("sha256") and _sha256(path) != art["sha256"]:
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


class Runner:
    """What every runner offers. Subclasses implement ``_run(x: float32 Tensor[n, 3, S, S]) -> (logits, probs)``.

    Attributes: ``sidecar`` (dict), ``class_names``, ``image_size``,
    ``threshold``, ``provider`` (what runs it, e.g. "onnxruntime:CPUExecutionProvider").
    """

    provider = "?"

    def __init__(self, path: str, sidecar: dict):
        self.path = path
        self.sidecar = sidecar
        self.class_names = list(sidecar["class_names"])
        self.image_size = int(sidecar["image_size"])
        self.threshold = float(sidecar["threshold"])
        self.max_batch = int(sidecar.get("batch", {}).get("max", 0)) or None
        self._mean = torch.tensor(sidecar["mean"], dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(sidecar["std"], dtype=torch.float32).view(3, 1, 1)

    # -- preprocessing from the sidecar ------------------------------------------------------------
    def preprocess(self, images) -> Tensor:
        """Tensor[N, 3, S, S] (already normalised) or a list of PIL images / file paths -> float32 Tensor[N, 3, S, S]."""
        S = self.image_size
        if isinstance(images, Tensor):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
                raise ValueError(f"{self.path} takes images of shape (N, 3, {S}, {S}), got {tuple(images.shape)}")
            return images.detach().to("cpu", torch.float32).contiguous()
        from PIL import Image
        from torchvision.transforms import functional as TF

        out = []
        for img in images:
            if isinstance(img, (str, os.PathLike)):
                with Image.open(img) as im:
                    img = im.convert("RGB")
            elif not isinstance(img, Image.Image):
                raise TypeError(f"predict takes a Tensor[N, 3, {S}, {S}] or PIL images / paths, got {type(img).__name__}")
            img = TF.resize(img.convert("RGB"), [S, S])
            out.append((TF.to_tensor(img) - self._mean) / self._std)
        if not out:
            raise ValueError("predict got no images")
        return torch.stack(out)

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _batches(self, images):
        x = self.preprocess(images)
        step = self.max_batch or x.shape[0]
        return [self._run(x[i : i + step]) for i in range(0, x.shape[0], step)]

    def predict_logits(self, images) -> Tensor:
        """Logits, float32 Tensor[N, C] on the CPU."""
        return torch.cat([lg.float().cpu() for lg, _ in self._batches(images)])

    def predict(self, images) -> Tensor:
        """Probabilities (the graph's fp32 sigmoid), float32 Tensor[N, C] on the CPU."""
        return torch.cat([p.float().cpu() for _, p in self._batches(images)])

    def labels(self, images) -> list[list[tuple[str, float]]]:
        """Per image, the (class name, probability) pairs at or above the sidecar's threshold, best first."""
        res = []
        for p in self.predict(images):
            order = p.argsort(descending=True).tolist()
            res.append([(self.class_names[c], float(p[c])) for c in order if p[c] >= self.threshold])
        return res

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, provider={self.provider!r}, classes={len(self.class_names)})"


def load(path: str, *, device: str | None = None, class_names: Sequence[str] | None = None,
         image_size: int | None = None, model: str | None = None, precision: str | None = None, **options) -> Runner:
    """A runner for an exported artefact, chosen by extension; checks its sidecar first.

    device: None (the best available), "cpu" or "cuda". ``class_names``,
    ``image_size``, ``model``, ``precision``: what the caller expects; a
    sidecar that differs is refused (:class:`SidecarMismatch`). ``options``
    go to the runner (TensorRT: ``io="torch" | "cuda-python" | "pycuda"``).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ValueError(f"{path}: unknown artefact type {ext!r}; expected one of {', '.join(EXTENSIONS)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"artefact {path} does not exist")
    kind = EXTENSIONS[ext]
    side = read_sidecar(path)
    check_sidecar(path, side, kind=kind, class_names=class_names, image_size=image_size, model=model,
                  precision=precision)
    if kind == "onnx":
        from .onnx import OnnxRunner

        return OnnxRunner(path, side, device=device, **options)
    if kind == "tensorrt":
        from .trt import TensorRTRunner

        return TensorRTRunner(path, side, device=device, **options)
    from .aoti import AOTIRunner

    return AOTIRunner(path, side, device=device, **options)


__all__ = ["load", "Runner", "SidecarMismatch", "read_sidecar", "check_sidecar", "EXTENSIONS"]
