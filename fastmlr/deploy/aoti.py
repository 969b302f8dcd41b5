"""AOTInductor: a ``.pt2`` package compiled ahead of time for the CPU, loadable from Python and C++, and its check."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..files import check_replaceable, remove_stale_temps, replace_file, temp_path_for
from .contract import INPUT_NAME, OUTPUT_NAMES, make_sidecar, write_sidecar
from .graph import EXPORT_BACKEND, InferenceGraph, batch_dim, check_batch_range, example_images, export_mode, quiet
from .verify import TOLERANCE, max_abs_diff, torch_probs


def export_aoti(model: nn.Module, path: str, image_size: int, *, max_batch: int = 16, sidecar: dict | None = None,
                min_batch: int = 1, backend: str = EXPORT_BACKEND) -> str:
    """Compile ``model`` ahead of time with AOTInductor into a ``.pt2`` package at ``path``; returns ``path``.

    Same I/O as the ONNX graph (``images`` -> ``logits``, ``probs``), dynamic
    batch in [min_batch, max_batch]. Loadable from Python
    (``torch._inductor.aoti_load_package``, :func:`fastmlr.runtime.load`) and C++
    (``torch::inductor::AOTIModelPackageLoader``, export/cpp). ``backend``:
    the fused ops' implementation traced into the graph; "reference" needs only
    libtorch, "cpp" keeps ``fastmlr::`` custom ops that the C++ program must link.
    """
    from torch._inductor import aoti_compile_and_package

    check_batch_range(min_batch, min_batch, max_batch)
    if not str(path).endswith(".pt2"):
        raise ValueError(f"--aoti: the package path must end in .pt2, got {path!r}")
    side = sidecar if sidecar is not None else make_sidecar(model, image_size)
    x = example_images(image_size, 2)
    with export_mode(model, backend), torch.no_grad(), quiet():
        graph = InferenceGraph(model, fp16=False).eval()
        ep = torch.export.export(graph, (x,), dynamic_shapes={INPUT_NAME: {0: batch_dim(min_batch, max_batch)}})
        check_replaceable(path, "--aoti")
        remove_stale_temps(path)
        tmp = temp_path_for(path, suffix=".tmp.pt2")
        try:
            aoti_compile_and_package(ep, package_path=tmp)
            replace_file(tmp, path, publish=True)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    write_sidecar(path, side, artifact={"format": "aoti"}, precision="fp32", backend=backend,
                  batch={"min": min_batch, "opt": min_batch, "max": max_batch},
                  device="cpu", outputs_order=list(OUTPUT_NAMES))
    return path


def verify_aoti(path: str, model: nn.Module, image_size: int, *, real=None, max_batch: int = 16) -> dict:
    """Load the ``.pt2`` and compare its probabilities with PyTorch's (fp32 tolerance)."""
    from torch._inductor import aoti_load_package

    rep = {"artifact": path, "kind": "aoti", "tolerance": TOLERANCE["fp32"]}
    runner = aoti_load_package(path)
    sets = {"random": example_images(image_size, min(3, max_batch))}
    if real is not None:
        sets["real"] = real[:max_batch]
    diffs = {}
    with torch.no_grad():
        for name, x in sets.items():
            logits, probs = runner(x)
            diffs[name] = max_abs_diff(probs, torch_probs(model, x))
    rep["max_abs_diff"] = diffs
    rep["ok"] = all(d <= rep["tolerance"] for d in diffs.values())
    return rep


__all__ = ["export_aoti", "verify_aoti"]
