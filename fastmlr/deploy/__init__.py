"""Building deployment artefacts: ONNX (fp32, fp16), AOTInductor, TensorRT engines, Triton repositories.

One module per job:

- the artefact contract (sidecar format, I/O names, writing and checking
  sidecars) and the GPU / TensorRT probe live in :mod:`fastmlr.artifact`, which
  :mod:`fastmlr.runtime` imports too; their names are re-exported here;
- :mod:`~fastmlr.deploy.graph`: the graph that is traced (:class:`InferenceGraph`,
  :func:`export_mode`);
- :mod:`~fastmlr.deploy.onnx`, :mod:`~fastmlr.deploy.aoti`, :mod:`~fastmlr.deploy.trt`,
  :mod:`~fastmlr.deploy.triton_repo`: one builder each, with its check
  (:mod:`~fastmlr.deploy.trt_plugins`: TensorRT plugins for the fused nodes);
- :mod:`~fastmlr.deploy.verify`: what the checks compare against, and their bounds.

``python -m fastmlr.export`` is the command over these. The runners never
import the builders (nor this package); this package's own import loads only the
contract and the probe, and the builders' names below on first use.
"""

from __future__ import annotations

import importlib

from ..artifact.contract import (
    INPUT_NAME,
    OUTPUT_NAMES,
    SIDECAR_FORMAT,
    SidecarMismatch,
    check_sidecar,
    make_sidecar,
    read_sidecar,
    set_thresholds,
    sidecar_path,
    write_sidecar,
)
from ..artifact.probe import TRTUnavailable, gpu_available, import_tensorrt, tensorrt_version

# Public names of the builder modules, imported when first asked for (they import torch.onnx, onnx, ...).
# Full module names, so that tests/test_architecture.py sees these imports.
_LAZY = {
    "InferenceGraph": "fastmlr.deploy.graph", "export_mode": "fastmlr.deploy.graph",
    "export_onnx": "fastmlr.deploy.onnx", "verify_onnx": "fastmlr.deploy.onnx",
    "onnx_op_types": "fastmlr.deploy.onnx", "unsupported_by_tensorrt": "fastmlr.deploy.onnx",
    "fp16_map_check": "fastmlr.deploy.onnx", "export_onnx_fp16": "fastmlr.deploy.onnx",
    "TRT_ONNX_OPS": "fastmlr.deploy.onnx", "DEFAULT_OPSET": "fastmlr.deploy.onnx",
    "export_aoti": "fastmlr.deploy.aoti", "verify_aoti": "fastmlr.deploy.aoti",
    "build_trt_engine": "fastmlr.deploy.trt",
    "register_plugins": "fastmlr.deploy.trt_plugins", "plugins_available": "fastmlr.deploy.trt_plugins",
    "triton_config": "fastmlr.deploy.triton_repo", "write_triton_repo": "fastmlr.deploy.triton_repo",
    "TOLERANCE": "fastmlr.deploy.verify", "FP16_MAP_POINTS": "fastmlr.deploy.verify",
    "real_images": "fastmlr.deploy.verify",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "INPUT_NAME", "OUTPUT_NAMES", "SIDECAR_FORMAT", "SidecarMismatch", "check_sidecar", "make_sidecar",
    "read_sidecar", "set_thresholds", "sidecar_path", "write_sidecar",
    "TRTUnavailable", "gpu_available", "import_tensorrt", "tensorrt_version",
    *_LAZY,
]
