"""Building TensorRT engines from fastmlr's fp16 ONNX graph (running them is :mod:`fastmlr.runtime.trt`).

The network is strongly typed: every tensor's type comes from the ONNX graph,
so "fp16" means the fp16 graph :func:`fastmlr.deploy.onnx.export_onnx` writes
(``fp16=True``), not a builder flag. TensorRT 11 removed ``BuilderFlag.FP16``
and makes every network strongly typed (its ``STRONGLY_TYPED`` creation flag
is kept, and ignored); TensorRT 10 needs the flag. This module sets it when
the enum has it and never touches ``BuilderFlag.FP16`` or ``EXPLICIT_BATCH``,
so one code path serves 10.x and 11.x.

A graph of the ``fused`` op set (nodes of the ``fastmlr`` domain) is built with
fastmlr's TensorRT plugins (:mod:`fastmlr.deploy.trt_plugins`): they are
registered before parsing, the parser is told to take their ahead-of-time
implementations, and the engine embeds the compiled kernels. Where they cannot
be registered, a ``fallback_onnx`` graph of the standard op set is built
instead, and one line says so.

``tensorrt`` is imported only through :func:`fastmlr.artifact.probe.import_tensorrt`,
after a GPU has been found.
"""

from __future__ import annotations

import os
import sys

from ..artifact import probe
from ..artifact.contract import INPUT_NAME, read_sidecar, write_sidecar
from ..files import atomic_write_bytes
from . import trt_plugins


def network_flags(trt) -> int:
    """Creation flags for ``Builder.create_network``: STRONGLY_TYPED where the enum still has it."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _aot_flag(trt) -> int:
    """``PREFER_AOT_PYTHON_PLUGINS`` as a creation-flag bit (0 where the enum lacks it)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS", None)
    return 0 if flag is None else 1 << int(flag)


def _graph_for_parser(onnx_path: str, fallback_onnx: str | None) -> tuple[str, bytes, str, list[str]]:
    """(graph path, bytes to parse, op set, plugin ops) after registering the plugins a fused graph needs."""
    with open(onnx_path, "rb") as fh:
        data = fh.read()
    if trt_plugins.graph_op_set(data) == "standard":
        return onnx_path, data, "standard", []
    try:
        trt_plugins.register_plugins()
    except probe.TRTUnavailable as e:
        if fallback_onnx is None:
            raise probe.TRTUnavailable(f"{onnx_path} has fastmlr's fused nodes, but their TensorRT plugins "
                                       f"are unavailable: {e}") from e
        print(f"TensorRT: fused plugins unavailable ({e}); building from the standard graph {fallback_onnx}",
              file=sys.stderr, flush=True)
        with open(fallback_onnx, "rb") as fh:
            return fallback_onnx, fh.read(), "standard", []
    data, ops = trt_plugins.prepare_fused_onnx(data, onnx_path)
    return onnx_path, data, "fused", ops


def _read(path: str) -> bytes | None:
    if path and os.path.exists(path):
        with open(path, "rb") as fh:
            return fh.read()
    return None


def trtexec_command(onnx_path: str, engine_path: str, image_size: int, min_batch: int, opt_batch: int,
                    max_batch: int) -> str:
    """The ``trtexec`` command that builds the same engine on a GPU host."""
    shape = f"x3x{image_size}x{image_size}"
    return (f"trtexec --onnx={onnx_path} --stronglyTyped --saveEngine={engine_path} "
            f"--minShapes={INPUT_NAME}:{min_batch}{shape} --optShapes={INPUT_NAME}:{opt_batch}{shape} "
            f"--maxShapes={INPUT_NAME}:{max_batch}{shape}")


def build_trt_engine(
    onnx_path: str,
    engine_path: str,
    *,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_gb: float = 4.0,
    timing_cache: str | None = None,
    sidecar: dict | None = None,
    input_name: str = INPUT_NAME,
    verbose: bool = False,
    fallback_onnx: str | None = None,
) -> str:
    """Build a strongly typed TensorRT engine from ``onnx_path`` and write it to ``engine_path``.

    One optimisation profile covers batch sizes ``min_batch..max_batch``
    (tuned for ``opt_batch``) at the graph's own C x H x W. ``timing_cache``
    is read if it exists and rewritten after the build, so later builds on
    the same GPU skip the timing they share. ``workspace_gb`` limits the
    builder's scratch memory. The engine and its sidecar (``engine_path.json``,
    from ``sidecar`` or the ONNX graph's sidecar) are written atomically.
    The op set is the graph's own: a ``fused`` graph is built with fastmlr's
    plugins, or, when they cannot be registered here, from ``fallback_onnx``
    (a ``standard`` graph of the same model); the log line and the sidecar's
    ``onnx_ops`` say which. Returns ``engine_path``. Raises
    :class:`~fastmlr.artifact.probe.TRTUnavailable` without a GPU or TensorRT (or
    without the plugins and a fallback), ``RuntimeError`` when parsing or building fails.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    if workspace_gb <= 0:
        raise ValueError(f"--workspace-gb must be positive, got {workspace_gb}")
    for path in (onnx_path, fallback_onnx):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"ONNX graph {path} does not exist")
    trt = probe.import_tensorrt()
    onnx_path, data, op_set, plugin_ops = _graph_for_parser(onnx_path, fallback_onnx)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt) | (_aot_flag(trt) if op_set == "fused" else 0))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(data)
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or ["no error reported"]))

    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise RuntimeError(f"{onnx_path}: expected an input named {input_name!r}, found {sorted(inputs)}")
    chw = tuple(inputs[input_name].shape)[1:]
    if any(int(d) < 0 for d in chw):
        raise RuntimeError(f"{onnx_path}: input {input_name!r} must have a fixed C x H x W, found {tuple(inputs[input_name].shape)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (min_batch, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    cache_bytes = _read(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_bytes or b"")
    config.set_timing_cache(cache, False)  # False: a cache from another GPU/version is refused, not silently used

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    blob = bytes(serialized)
    atomic_write_bytes(engine_path, lambda fh: fh.write(blob), publish=True)
    if timing_cache:
        new_cache = bytes(config.get_timing_cache().serialize())
        atomic_write_bytes(timing_cache, lambda fh: fh.write(new_cache))

    if sidecar is None:
        sidecar = read_sidecar(onnx_path)
    write_sidecar(
        engine_path, {k: v for k, v in sidecar.items() if k not in ("artifact", "opset")},
        artifact={"format": "tensorrt", "onnx": os.path.basename(onnx_path)}, precision="fp16",
        batch={"min": min_batch, "opt": opt_batch, "max": max_batch}, onnx_ops=op_set,
        tensorrt={"version": getattr(trt, "__version__", None), "strongly_typed": True,
                  "workspace_gb": workspace_gb, "timing_cache": timing_cache,
                  "plugins": [f"{trt_plugins.DOMAIN}::{op}" for op in plugin_ops],
                  "plugin_kernels": trt_plugins.KERNEL_FORMAT if plugin_ops else None},
    )
    used = f" with plugins {', '.join(plugin_ops)}" if plugin_ops else ""
    print(f"TensorRT {getattr(trt, '__version__', '?')}: engine {engine_path} ({len(blob)} bytes) "
          f"from the {op_set} op set{used}", file=sys.stderr)
    return engine_path


__all__ = ["build_trt_engine", "network_flags", "trtexec_command"]
