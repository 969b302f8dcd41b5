"""A Triton Inference Server model repository: ``config.pbtxt``, the model file and the sidecar for clients."""

from __future__ import annotations

import os

from ..artifact.contract import INPUT_NAME, OUTPUT_NAMES, read_sidecar, seal, sidecar_path
from ..files import atomic_write_bytes, atomic_write_json


def triton_config(name: str, platform: str, num_classes: int, image_size: int, max_batch: int,
                  opt_batch: int = 1) -> str:
    """``config.pbtxt`` (protobuf text format) for Triton: dynamic batching, float32 I/O."""
    preferred = sorted({b for b in (opt_batch, max_batch) if 1 <= b <= max_batch})
    outputs = []
    for i, out in enumerate(OUTPUT_NAMES):
        outputs += ["  {", f'    name: "{out}"', "    data_type: TYPE_FP32", f"    dims: [ {int(num_classes)} ]",
                    "  }" + ("," if i < len(OUTPUT_NAMES) - 1 else "")]
    return "\n".join([
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {int(max_batch)}",
        "input [",
        "  {",
        f'    name: "{INPUT_NAME}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ 3, {int(image_size)}, {int(image_size)} ]",
        "  }",
        "]",
        "output [",
        *outputs,
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        "  max_queue_delay_microseconds: 100",
        "}",
        "instance_group [",
        "  {",
        "    count: 1",
        "    kind: KIND_GPU" if platform == "tensorrt_plan" else "    kind: KIND_AUTO",
        "  }",
        "]",
        "",
    ])


def write_triton_repo(repo: str, sidecar: dict, *, engine: str | None = None, onnx_path: str | None = None,
                      max_batch: int = 16, opt_batch: int = 1, name: str | None = None) -> str:
    """Write ``REPO/fastmlr_<model>/{config.pbtxt, 1/model.plan | 1/model.onnx, fastmlr.json}``.

    The TensorRT engine is used when given, else the ONNX graph (ONNX Runtime
    backend). ``fastmlr.json`` is the served file's own sidecar when it has
    one, else ``sidecar``. Returns the model folder. Files are written atomically.
    """
    if engine is None and onnx_path is None:
        raise ValueError("--triton-repo needs an engine (--trt) or an ONNX graph to serve")
    name = name or f"fastmlr_{sidecar['model']}"
    folder = os.path.join(repo, name)
    src, platform, fname = (engine, "tensorrt_plan", "model.plan") if engine else (onnx_path, "onnxruntime_onnx", "model.onnx")
    with open(src, "rb") as fh:
        blob = fh.read()
    atomic_write_bytes(os.path.join(folder, "1", fname), lambda fh: fh.write(blob), publish=True)
    cfg = triton_config(name, platform, sidecar["num_classes"], sidecar["image_size"], max_batch, opt_batch)
    atomic_write_bytes(os.path.join(folder, "config.pbtxt"), lambda fh: fh.write(cfg.encode()), publish=True)
    # Triton ignores extra files in the model folder; clients read class names and preprocessing here.
    side = read_sidecar(src) if os.path.exists(sidecar_path(src)) else dict(sidecar)
    atomic_write_json(os.path.join(folder, "fastmlr.json"),
                      seal({**side, "triton": {"name": name, "platform": platform}}), publish=True)
    return folder


def repo_files(repo: str, model_name: str, *, engine: bool) -> list[str]:
    """The files :func:`write_triton_repo` may write for ``model_name`` (both served files when an engine may fail)."""
    folder = os.path.join(repo, model_name)
    served = ["model.plan", "model.onnx"] if engine else ["model.onnx"]
    return [os.path.join(folder, "1", f) for f in served] + [os.path.join(folder, n) for n in ("config.pbtxt", "fastmlr.json")]


__all__ = ["triton_config", "write_triton_repo", "repo_files"]
