"""Runners for exported fastmlr models: one interface over ONNX Runtime, TensorRT and AOTInductor.

``load(path)`` picks the runner from the file's extension (``.onnx``,
``.plan``/``.engine``, ``.pt2``) and reads the artefact's sidecar
(``path.json``, the contract of :mod:`fastmlr.artifact.contract`); the sidecar
gives the class names, the input size, the normalisation and the threshold,
so a runner takes images as they come::

    runner = fastmlr.runtime.load("model.onnx")
    probs = runner.predict([PIL.Image.open("a.jpg")])      # Tensor[1, C], cpu float32
    logits, probs = runner.run(prepared)                   # one prepared batch, no preprocessing
    runner.class_names, runner.provider

``predict`` takes a float Tensor[N, 3, S, S] already normalised with the
sidecar's mean/std, a uint8 Tensor[N, 3, S, S] of pixels 0..255 (divided by
255 and normalised here), or PIL images / image paths (one alone, or a list;
16-bit grey images are scaled to 8 bits, as in training). Other tensor dtypes
(bool, integers) are refused: their scale is unknown.

A runner refuses an artefact whose sidecar does not fit it (another file's
hash, another format, a sidecar edited after export) or the request (``class_names=``, ``image_size=``,
``model=``, ``precision=``), saying what differs. Building artefacts lives in
:mod:`fastmlr.deploy`; nothing here imports its builders.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..artifact.contract import EXTENSIONS, SIDECAR_FORMAT, SidecarMismatch, check_sidecar, read_sidecar
from .base import Runner


def load(path: str, *, device: str | None = None, class_names: Sequence[str] | None = None,
         image_size: int | None = None, model: str | None = None, precision: str | None = None,
         verify_hash: bool = True, **options) -> Runner:
    """A runner for an exported artefact, chosen by extension; checks its sidecar first.

    device: None (the best available), "cpu" or "cuda". ``class_names``,
    ``image_size``, ``model``, ``precision``: what the caller expects; a
    sidecar that differs is refused (:class:`SidecarMismatch`), as is an
    artefact whose sha256 differs from its sidecar's or a sidecar edited after
    export; ``verify_hash=False`` skips both checks (deliberately). ``options``
    go to the runner (TensorRT: ``io="torch" | "cuda-python" | "pycuda"``).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ValueError(f"{path}: unknown artefact type {ext!r}; expected one of {', '.join(EXTENSIONS)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"artefact {path} does not exist")
    if not os.path.isfile(path):  # a FIFO would block the hash; a folder is no artefact
        raise ValueError(f"artefact {path} is not a regular file")
    kind = EXTENSIONS[ext]
    side = read_sidecar(path, verify_hash=verify_hash)
    check_sidecar(path, side, kind=kind, class_names=class_names, image_size=image_size, model=model,
                  precision=precision, verify_hash=verify_hash)
    if kind == "onnx":
        from .onnx import OnnxRunner

        return OnnxRunner(path, side, device=device, **options)
    if kind == "tensorrt":
        from .trt import TensorRTRunner

        return TensorRTRunner(path, side, device=device, **options)
    from .aoti import AOTIRunner

    return AOTIRunner(path, side, device=device, **options)


__all__ = ["load", "Runner", "SidecarMismatch", "read_sidecar", "check_sidecar", "EXTENSIONS", "SIDECAR_FORMAT"]
