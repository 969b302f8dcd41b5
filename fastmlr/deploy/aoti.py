"""AOTInductor: a ``.pt2`` package compiled ahead of time for the CPU or a CUDA GPU, loadable from Python and C++,
and its check.

Which implementation of fastmlr's fused ops goes into the package (``aoti_ops``,
recorded in the sidecar): "cpp" keeps them as calls of the ``fastmlr::`` custom
ops, run by fastmlr's compiled kernels (``fastmlr._C`` in Python; the ops library
that export/cpp builds and links in C++); "reference" decomposes them into ATen
ops, so the package needs libtorch only. The default is "cpp" wherever
``fastmlr._C`` is built.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import torch
import torch.nn as nn

from .. import ops
from ..artifact.contract import INPUT_NAME, OUTPUT_NAMES, make_sidecar, write_sidecar
from ..files import atomic_write_bytes, check_replaceable, remove_stale_temps
from ..runtime.aoti import OPS_NAMESPACE, load_package, package_custom_ops
from .graph import InferenceGraph, batch_dim, check_batch_range, example_images, export_mode, quiet
from .verify import TOLERANCE, fp32_against_float64, max_abs_diff, torch_probs, within_fp32

AOTI_OPS = ("cpp", "reference")


AOTI_DEVICES = ("cpu", "cuda")


def cpp_ops_unavailable(device: str = "cpu") -> str | None:
    """None where fastmlr's compiled ops (``fastmlr._C``) run on ``device``, else why not."""
    for row in ops.backend_status(device):
        if row.name == "cpp":
            return None if row.runs else row.reason
    return "the cpp backend is unknown to fastmlr.ops"


def default_aoti_ops(device: str = "cpu") -> str:
    """"cpp" where ``fastmlr._C`` is built (with its CUDA kernels, for ``device`` "cuda"), else "reference"."""
    return "cpp" if cpp_ops_unavailable(device) is None else "reference"


def check_device(device: str) -> None:
    """ValueError unless ``device`` is one AOTInductor compiles for here."""
    if device not in AOTI_DEVICES:
        raise ValueError(f"AOTInductor compiles for one of {', '.join(AOTI_DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("AOTInductor for device cuda needs a CUDA GPU: torch sees none here")


def graph_custom_ops(ep) -> list[str]:
    """The ``fastmlr::`` ops an exported program calls, sorted, e.g. ``["fastmlr::<op>", ...]``."""
    names = set()
    for node in ep.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            name = node.target.name()  # "fastmlr::<op>" (overload "default" omitted)
            if name.startswith(OPS_NAMESPACE):
                names.add(name.split(".")[0])
    return sorted(names)


def export_program(model: nn.Module, image_size: int, *, aoti_ops: str, min_batch: int = 1, max_batch: int = 16,
                   device: str = "cpu"):
    """``torch.export`` of the model's inference graph with its fused ops on ``aoti_ops``; returns (program, ops used).

    The model and the example images are on ``device`` (the model is moved there), so the program is
    traced, and later compiled, for it.

    "cpp" keeps the ops that fastmlr's compiled kernels implement; a model whose
    ops they do not all implement (AAMN's, MMDSR's) is traced on "reference",
    which is then what it returns as the ops used.
    """
    if aoti_ops not in AOTI_OPS:
        raise ValueError(f"--aoti-ops must be one of {', '.join(AOTI_OPS)}, got {aoti_ops!r}")
    if aoti_ops == "cpp":
        why = cpp_ops_unavailable(device)
        if why is not None:
            raise ValueError(f"--aoti-ops cpp needs fastmlr's compiled ops (fastmlr._C): {why}; "
                             "build it, or use --aoti-ops reference")
    model = model.to(device)
    x = example_images(image_size, 2).to(device)
    dyn = {INPUT_NAME: {0: batch_dim(min_batch, max_batch)}}
    graph = InferenceGraph(model, fp16=False).eval()
    try:
        with export_mode(model, aoti_ops), torch.no_grad(), quiet():
            return torch.export.export(graph, (x,), dynamic_shapes=dyn), aoti_ops
    except ops.BackendError as e:
        if aoti_ops != "cpp":
            raise
        first = str(e).splitlines()[0]
        print(f"aoti: the cpp ops cannot run all of {type(model).__name__}'s fused ops ({first}); "
              "the package uses the reference ops", file=sys.stderr, flush=True)
    with export_mode(model, "reference"), torch.no_grad(), quiet():
        return torch.export.export(graph, (x,), dynamic_shapes=dyn), "reference"


def inductor_configs(device: str) -> dict:
    """Inductor's options for a package compiled for ``device``.

    On the CPU the weights are frozen into the package (``freezing``): Inductor folds them as constants and
    lays the convolution and linear weights out for oneDNN once, at compile time, instead of on every call.
    Measured (``benchmarks/runtime_options.py``; ResNet-101 at 448 px, batch 1, AMD Zen 5): the baseline's
    package 399-444 -> 250-288 ms on 1 thread, 156-169 -> 143-151 ms on 2. The package stays a plain ``.pt2``
    that Python and C++ load as before.
    """
    return {"freezing": True} if device == "cpu" else {}


def export_aoti(model: nn.Module, path: str, image_size: int, *, max_batch: int = 16, sidecar: dict | None = None,
                min_batch: int = 1, aoti_ops: str | None = None, device: str = "cpu", opt_batch: int | None = None) -> str:
    """Compile ``model`` ahead of time with AOTInductor into a ``.pt2`` package at ``path``; returns ``path``.

    Same I/O as the ONNX graph (``images`` -> ``logits``, ``probs``), dynamic
    batch in [min_batch, max_batch]. Loadable from Python
    (``torch._inductor.aoti_load_package``, :func:`fastmlr.runtime.load`) and C++
    (``torch::inductor::AOTIModelPackageLoader``, export/cpp). ``aoti_ops``:
    the fused ops' implementation in the package (module docstring); None is
    :func:`default_aoti_ops`. ``device``: "cpu" or "cuda", what the package is
    compiled for and runs on (the model is moved there). The sidecar records
    them as ``"aoti_ops"``, ``"device"``, and the ``fastmlr::`` ops called as
    ``"custom_ops"``. ``opt_batch``: recorded in the sidecar's batch range as every artefact of one export
    records it (AOTInductor compiles for the whole range; None: ``min_batch``).
    """
    from torch._inductor import aoti_compile_and_package

    opt_batch = min_batch if opt_batch is None else opt_batch
    check_batch_range(min_batch, opt_batch, max_batch)
    check_device(device)
    if not str(path).endswith(".pt2"):
        raise ValueError(f"--aoti: the package path must end in .pt2, got {path!r}")
    side = sidecar if sidecar is not None else make_sidecar(model, image_size)
    ep, used = export_program(model, image_size, aoti_ops=aoti_ops or default_aoti_ops(device), min_batch=min_batch,
                              max_batch=max_batch, device=device)
    custom = graph_custom_ops(ep)
    check_replaceable(path, "--aoti")
    remove_stale_temps(path)
    # torch's package writer aborts the process when the disk fills (c10::Error in a destructor): the package
    # is staged in the system's temporary folder and copied beside the target by Python, whose write fails
    # cleanly (files.NoSpace, naming the file).
    with torch.no_grad(), quiet(), tempfile.TemporaryDirectory(prefix="fastmlr-aoti-") as stage:
        staged = os.path.join(stage, os.path.basename(path))
        aoti_compile_and_package(ep, package_path=staged, inductor_configs=inductor_configs(device))
        with open(staged, "rb") as src:
            atomic_write_bytes(path, lambda fh: shutil.copyfileobj(src, fh, 1 << 20), publish=True)
    write_sidecar(path, side, artifact={"format": "aoti"}, precision="fp32", backend=used, aoti_ops=used,
                  custom_ops=custom,
                  batch={"min": min_batch, "opt": opt_batch, "max": max_batch},
                  device=device, outputs_order=list(OUTPUT_NAMES))
    return path


def verify_aoti(path: str, model: nn.Module, image_size: int, *, real=None, max_batch: int = 16) -> dict:
    """Load the ``.pt2`` and compare its probabilities with PyTorch's: within the fp32 tolerance, or, where a
    deep network's rounding compounds past it, against the float64 twin within twice PyTorch's own fp32
    error (the ONNX check's rule, :func:`fastmlr.deploy.verify.fp32_against_float64`). A CPU package computes
    its convolutions and linear layers with weights packed at compile time (freezing), summing in another
    order than eager PyTorch: a random ResNet-101 at 448 px differs from it by 4e-4 (PyTorch's own error
    against float64 is 2.5e-4)."""
    rep = {"artifact": path, "kind": "aoti", "tolerance": TOLERANCE["fp32"]}
    runner = load_package(path)
    sets = {"random": example_images(image_size, min(3, max_batch))}
    if real is not None:
        sets["real"] = real[:max_batch]
    diffs, past = {}, {}
    dev = next(model.parameters()).device  # a CUDA package's model was moved to the GPU by its export
    with torch.no_grad():
        for name, x in sets.items():
            logits, probs = runner(x)
            ref = torch_probs(model, x.to(dev))
            diffs[name] = max_abs_diff(probs, ref)
            if diffs[name] > rep["tolerance"]:
                past[name] = fp32_against_float64(model, x.to(dev), probs, ref, rep["tolerance"])
    rep["max_abs_diff"] = diffs
    if past:
        rep["against_float64"] = past
    rep["ok"] = all(within_fp32(rep, k) for k in diffs)
    return rep


__all__ = ["AOTI_OPS", "AOTI_DEVICES", "check_device", "export_aoti", "inductor_configs", "verify_aoti", "export_program", "default_aoti_ops", "cpp_ops_unavailable",
           "graph_custom_ops", "package_custom_ops"]
