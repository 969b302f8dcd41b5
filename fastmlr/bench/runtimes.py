"""Runtimes: the columns of the inference table (how a model is run), each saying why it cannot run here.

A runtime (PyTorch eager, torch.compile, ONNX Runtime, AOTInductor, TensorRT)
is not a :mod:`fastmlr.ops` backend (which implementation of SRDL's fused ops
runs inside it); the bench keeps the two words apart.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from typing import Callable

import torch


class SkipCell(Exception):
    """This runtime cannot run here; the message says why."""


def _deploy(module: str, name: str):
    """``fastmlr.deploy.<module>.<name>``, loaded when a runtime is prepared (the builders are heavy)."""
    try:
        return getattr(importlib.import_module(f"fastmlr.deploy.{module}"), name)
    except (ImportError, AttributeError) as e:
        raise SkipCell(f"fastmlr.deploy.{module}.{name} not available: {type(e).__name__}: {e}") from e


def _export(model, ctx, **plan):
    """The artefacts of one column through the export pipeline (fastmlr.deploy.pipeline), unchecked and quiet."""
    from ..deploy import pipeline  # a plain import: the bench depends on the export pipeline, visibly
    from ..artifact.contract import make_sidecar

    bs, size = ctx["batch_sizes"], ctx["image_size"]
    model = model.cpu()
    return pipeline.export_artefacts(
        pipeline.ExportPlan(model, size, make_sidecar(model, size), min_batch=1, opt_batch=min(bs), max_batch=max(bs),
                            verify=False, **plan), say=lambda line: None)


def _load_runner(path: str, **kw):
    from .. import runtime

    return runtime.load(path, **kw)


class Runtime:
    """One column. ``why_not(device)`` says why it cannot run (None if it can); ``prepare`` returns the timed call."""

    name = "?"
    label = "?"
    devices: tuple[str, ...] = ("cpu", "cuda")
    timed = "model(images) then sigmoid, PyTorch"
    torch_alloc = True

    def why_not(self, device: torch.device) -> str | None:
        if device.type not in self.devices:
            need = " or ".join("a CUDA GPU" if d == "cuda" else "the CPU" for d in self.devices)
            have = "no GPU is present" if not torch.cuda.is_available() else f"running on {device.type}"
            return f"{self.label} needs {need}; {have}"
        return None

    def prepare(self, model: torch.nn.Module, ctx: dict) -> Callable:
        raise NotImplementedError


class Eager(Runtime):
    name, label = "eager", "PyTorch eager fp32"

    def prepare(self, model, ctx):
        def fn(x):
            with torch.inference_mode():
                return torch.sigmoid(model(x))

        return fn


def _have_cxx() -> bool:
    return bool(shutil.which("c++") or shutil.which("g++"))


class Compile(Runtime):
    name, label = "compile", "torch.compile (inductor) fp32"
    timed = "torch.compile(model)(images) then sigmoid; compilation in prepare_s"

    def why_not(self, device):
        r = super().why_not(device)
        if r:
            return r
        if device.type == "cpu" and not _have_cxx():
            return "torch.compile on the CPU needs a C++ compiler (c++/g++ not on PATH)"
        return None

    def prepare(self, model, ctx):
        compiled = torch.compile(model, dynamic=False)

        def fn(x):
            with torch.inference_mode():
                return torch.sigmoid(compiled(x))

        # Compile for every batch size now, so prepare_s holds the compilation and warm-up only warms.
        for b in ctx["batch_sizes"]:
            fn(ctx["example"](b))
        return fn


class AutocastFP16(Runtime):
    name, label = "autocast-fp16", "PyTorch fp16 autocast"
    devices = ("cuda",)
    timed = "model(images) under torch.autocast(float16), then sigmoid"

    def prepare(self, model, ctx):
        def fn(x):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                return torch.sigmoid(model(x).float())

        return fn


class OnnxRT(Runtime):
    timed = "ONNX Runtime session.run on the prepared images (runner.run): logits and probs"
    torch_alloc = False

    def __init__(self, fp16: bool, onnx_ops: str = "standard"):
        self.fp16 = fp16
        self.onnx_ops = onnx_ops
        if onnx_ops == "fused":
            self.name, self.label = "onnxrt-fused", "ONNX Runtime fp32, fused fastmlr nodes (onnxruntime-extensions)"
            self.timed = ("ONNX Runtime session.run (runner.run), the fastmlr nodes as onnxruntime-extensions PyOps "
                          "calling the cpp kernels; intra-op spinning off for every model of the column, as the "
                          "runtime sets it for fused graphs")
        else:
            self.name = "onnxrt-fp16" if fp16 else "onnxrt-fp32"
            self.label = f"ONNX Runtime {'fp16' if fp16 else 'fp32'}"

    def why_not(self, device):
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu on a GPU host)"
        if self.onnx_ops == "fused":
            if importlib.util.find_spec("onnxruntime_extensions") is None:
                return "the fused graph's nodes need onnxruntime-extensions (pip install onnxruntime-extensions)"
            from .. import ops

            nodes = {r.name: r for r in ops.backend_status("cpu")}["nodes"]
            if not nodes.runs:
                return f"the fused op set traces through the 'nodes' ops backend: {nodes.reason}"
            if device.type != "cpu":
                return "the fused graph's PyOps run on the CPU: this column measures the CPU"
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return (f"onnxruntime offers only {ort.get_available_providers()} here: it would run on the CPU, "
                        "not the GPU (pip install onnxruntime-gpu)")
        return None

    def prepare(self, model, ctx):
        path = os.path.join(ctx["workdir"], f"{ctx['model_name']}-{self.name}.onnx")
        _export(model, ctx, **{"onnx16" if self.fp16 else "onnx32": path}, fp16_search=False, onnx_ops=self.onnx_ops)
        opts = {"threads": ctx["threads"]} if ctx.get("threads") else {}
        if self.onnx_ops == "fused":  # like with like: a baseline without fused nodes runs as the fused graphs do
            opts["spin"] = False
        runner = _load_runner(path, device=ctx["device"].type, **opts)
        ctx["provider"] = runner.provider
        ctx["input_device"] = "cpu"  # the ONNX runner takes host tensors
        return runner.run


class AOTI(Runtime):
    name, label = "aoti", "AOTInductor fp32"
    timed = "the AOTInductor package's call on the prepared images (runner.run): logits and probs"

    def why_not(self, device):
        r = super().why_not(device)
        if r:
            return r
        if device.type == "cuda" and not torch.cuda.is_available():
            return f"{self.label} on CUDA needs a CUDA GPU; none is present"
        if not _have_cxx():
            return "AOTInductor needs a C++ compiler (c++/g++ not on PATH)"
        return None

    def prepare(self, model, ctx):
        dev = ctx["device"].type
        path = os.path.join(ctx["workdir"], f"{ctx['model_name']}-aoti-{dev}.pt2")
        # Compiled for the bench's device: CUDA kernels on a GPU, C++ on the CPU.
        _export(model, ctx, aoti=path, aoti_device=dev)
        runner = _load_runner(path, device=dev)
        # Which fused ops the package holds (fastmlr's kernels by default where fastmlr._C is built).
        ctx["provider"] = f"{runner.provider}, {runner.sidecar.get('aoti_ops', 'reference')} ops"
        return runner.run


class TensorRTFP16(Runtime):
    name, label = "trt-fp16", "TensorRT fp16"
    devices = ("cuda",)
    timed = "TensorRT execution context on the prepared CUDA images (runner.run): logits and probs"
    torch_alloc = False
    flavour = "enterprise"

    def why_not(self, device):
        r = super().why_not(device)
        if r:
            return r
        from ..artifact.probe import TRTUnavailable, import_tensorrt

        try:
            import_tensorrt(self.flavour, need_gpu=True)
        except TRTUnavailable as e:
            return str(e)
        return None

    def targets(self, device) -> tuple | None:
        return None

    onnx_ops = "standard"

    def prepare(self, model, ctx):
        stem = os.path.join(ctx["workdir"], f"{ctx['model_name']}-{self.name}")
        res = _export(model, ctx, onnx16=stem + ".fp16.onnx", trt=stem + ".engine", fp16_search=False,
                      trt_op_set=self.onnx_ops, timing_cache=os.path.join(ctx["workdir"], "trt-timing.cache"),
                      trt_flavour=self.flavour, trt_targets=self.targets(ctx["device"]))
        if res.trt_error is not None:
            raise SkipCell(f"TensorRT engine not built: {res.trt_error}")
        runner = _load_runner(stem + ".engine", device="cuda")
        ctx["provider"] = runner.provider
        return runner.run


class TensorRTFused(TensorRTFP16):
    """TensorRT fp16 from the fused op set: the fastmlr nodes as plugins (fastmlr.deploy.trt_plugins)."""

    name, label = "trt-fused", "TensorRT fp16, fused fastmlr nodes as plugins"
    timed = "TensorRT execution context of the engine built from the fused graph (runner.run): logits and probs"
    onnx_ops = "fused"

    def why_not(self, device):
        r = super().why_not(device)
        if r:
            return r
        ok, why = _deploy("trt_plugins", "plugins_available")()
        return None if ok else f"the fused nodes' TensorRT plugins cannot be registered: {why}"


class TensorRTRTX(TensorRTFP16):
    """TensorRT-RTX fp16: the engine built for this GPU's compute capability, compiled just in time on it."""

    name, label = "trt-rtx", "TensorRT-RTX fp16"
    timed = ("TensorRT-RTX execution context on the prepared CUDA images (runner.run), after a warm-up run that "
             "pays the just-in-time compile: logits and probs")
    flavour = "rtx"

    def why_not(self, device):
        r = super().why_not(device)
        if r:
            return r
        cc = "{}.{}".format(*torch.cuda.get_device_capability(device))
        targets = _deploy("trt", "RTX_TARGETS")
        if cc not in targets:
            return f"TensorRT-RTX builds for compute capability {', '.join(targets)}; this GPU is {cc}"
        return None

    def targets(self, device):
        return ("{}.{}".format(*torch.cuda.get_device_capability(device)),)


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (Eager(), Compile(), AutocastFP16(), OnnxRT(False), OnnxRT(True), OnnxRT(False, "fused"), AOTI(),
              TensorRTFP16(), TensorRTFused(), TensorRTRTX())
}
